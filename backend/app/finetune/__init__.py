"""The author's own model: a training set from the author's texts (``dataset``), a LoRA
fine-tune of the embedded model (``training``), and its export as a GGUF LoRA adapter that
llama.cpp loads beside the base model (``export``)."""
