"""The story archive: the author's texts in Chroma, searchable and fed to the agents.

``documents`` parses files, ``chunking`` cuts them, ``embeddings`` embeds offline, ``store`` is
the only module importing chromadb, ``ingest`` writes and rebuilds, ``retrieval`` searches and
feeds the agents, ``rag`` answers from passages, and ``service`` ties them into ``Archive``.
"""
