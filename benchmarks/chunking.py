"""The chunk rule: how many MQTT messages a stream costs against how long a token waits
before it leaves the worker, for several rules, side by side on the same token streams.

The token streams are the simulator's text (word tokens, a comma or a sentence end every
five words or so) at 30 and 100 tokens/s with +-30% jitter. Each rule is the worker's own
Coalescer driven by a discrete-event model of the job runner's loop (a chunk leaves when
a token makes it due, or when its oldest token has waited the delay), so the figures are
exact for the rule and free of machine noise."""

import random
import statistics

from fleet_worker.coalesce import DELIMITERS, Coalescer
from llama_farm.ollama_sim.replies import lorem_tokens

RULES: list[tuple[str, float, int, tuple[str, ...]]] = [
    ("every token", 0.0, 1, ()),
    ("25 ms or delimiter or 100 chars", 0.025, 100, DELIMITERS),
    ("50 ms or delimiter or 100 chars", 0.050, 100, DELIMITERS),
    ("100 ms or delimiter or 100 chars", 0.100, 100, DELIMITERS),
    ("25 ms or 100 chars", 0.025, 100, ()),
    ("50 ms or 100 chars (chosen)", 0.050, 100, ()),
    ("100 ms or 100 chars", 0.100, 100, ()),
    ("200 ms or 100 chars", 0.200, 100, ()),
]


def token_times(count: int, rate: float, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(count):
        t += (1 / rate) * rng.uniform(0.7, 1.3)
        times.append(t)
    return times


def simulate(
    tokens: list[str], times: list[float], delay_s: float, max_chars: int, delims: tuple[str, ...]
) -> tuple[int, list[float]]:
    """(messages sent, each token's wait in the worker in seconds)."""
    coalescer = Coalescer(delay_s, max_chars, delims)
    waiting: list[float] = []  # arrival times of buffered tokens
    waits: list[float] = []
    messages = 0

    def flush(at: float) -> None:
        nonlocal messages
        messages += 1
        waits.extend(at - arrived for arrived in waiting)
        waiting.clear()

    for i, (token, now) in enumerate(zip(tokens, times, strict=True)):
        if waiting and waiting[0] + delay_s <= now:
            # The runner's wait timed out before this token came: it takes the buffer.
            coalescer.take()
            flush(waiting[0] + delay_s)
        waiting.append(now)
        chunk = coalescer.add(token, now=now)
        if i == 0 and chunk is None:
            chunk = coalescer.take()  # the runner sends the first token at once
        if chunk is not None:
            flush(now)
    if coalescer.take() is not None:
        flush(times[-1])
    return messages, waits


def run(count: int = 3000) -> list[tuple[str, float, float, float, float]]:
    """Rows: rule, rate, messages per stream-second, mean and p99 token wait (ms)."""
    tokens = lorem_tokens("llama3", [{"role": "user", "content": "benchmark"}], count)
    rows = []
    for rate in (30.0, 100.0):
        times = token_times(count, rate)
        duration = times[-1]
        for name, delay, chars, delims in RULES:
            messages, waits = simulate(tokens, times, delay, chars, delims)
            p99 = statistics.quantiles(waits, n=100)[98] if len(set(waits)) > 1 else waits[0]
            rows.append(
                (name, rate, messages / duration, statistics.fmean(waits) * 1000, p99 * 1000)
            )
    return rows


def main() -> str:
    print("chunk rule: MQTT messages per stream-second and token wait in the worker")
    header = f"  {'rule':<42} {'tok/s':>5} {'msg/s':>6} {'vs every token':>14}"
    print(header + f" {'mean wait':>9} {'p99 wait':>8}")
    rows = run()
    lines = [
        "| rule | tok/s | msg/s per stream | vs every token | mean wait | p99 wait |",
        "|---|---|---|---|---|---|",
    ]
    for rate in (30.0, 100.0):
        base = next(r[2] for r in rows if r[1] == rate and r[0] == "every token")
        for name, r, per_s, mean_ms, p99_ms in (row for row in rows if row[1] == rate):
            print(
                f"  {name:<42} {r:5.0f} {per_s:6.1f} {per_s / base:13.2f}x "
                f"{mean_ms:7.1f}ms {p99_ms:6.1f}ms"
            )
            label = f"**{name}**" if "chosen" in name else name
            lines.append(
                f"| {label} | {r:.0f} | {per_s:.1f} | {per_s / base:.2f}x "
                f"| {mean_ms:.1f} ms | {p99_ms:.1f} ms |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
