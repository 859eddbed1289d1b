"""The end-to-end suite of ``tests/e2e/test_model_http.py``, unchanged, against our app on the
remote backend (``LLM_BACKEND=openai``) talking to a real llama-cpp-python server that serves the
embedded GGUF on loopback. ``tests/remote/conftest.py`` points the ``http`` fixture there."""

from tests.e2e.test_model_http import *  # noqa: F403 - the same tests, collected here

# Every operation's stream twin is checked once, in process (tests/e2e/test_model_http.py); on
# the remote backend the chapter streams above cover streaming, which keeps the suite short.
for _name in ("test_every_stream_twin_sends_meta_tokens_and_one_done",
              "test_the_archivists_streams_send_meta_tokens_and_one_done"):
    globals().pop(_name, None)
