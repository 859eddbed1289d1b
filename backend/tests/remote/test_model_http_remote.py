"""The end-to-end suite of ``tests/e2e/test_model_http.py``, unchanged, against our app on the
remote backend (``LLM_BACKEND=openai``) talking to a real llama-cpp-python server that serves the
embedded GGUF on loopback. ``tests/remote/conftest.py`` points the ``http`` fixture there."""

from tests.e2e.test_model_http import *  # noqa: F403 - the same tests, collected here
