"""The garbage collector's full collections, before and after ``settle_heap``.

A full collection walks every object the collector tracks and stops the process
meanwhile. Each service imports its code (modules, classes, functions: tens of thousands
of objects that live as long as the process), and every full collection walked all of
it again. ``farm_runtime.lifecycle.settle_heap`` (called by every service at start)
moves what exists then out of the collector's sight. For each service, in a fresh
interpreter: import what it runs, then time full collections with those objects in view
and after ``settle_heap``, side by side in one run."""

import json
import subprocess
import sys

from benchmarks.farm_processes import REPO

# What each service's process imports before it starts (as `llama-farm <service>`).
SERVICES = {
    "coordinator": ["llama_farm.cli", "coordinator.service"],
    "webapp": ["llama_farm.cli", "webapp.service"],
    "worker": ["fleet_worker.cli"],
    "simulator": ["llama_farm.cli", "farm_runtime.http_serving", "llama_farm.ollama_sim.app"],
}
ROUNDS = 7

PROBE = """
import gc, importlib, json, statistics, sys, time
for name in sys.argv[1:]:
    importlib.import_module(name)
from farm_runtime.lifecycle import settle_heap

def full_collections():
    times = []
    for _ in range({rounds}):
        start = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

gc.collect()
tracked = len(gc.get_objects())
before = full_collections()
settle_heap()
after = full_collections()
print(json.dumps({{"tracked": tracked, "frozen": gc.get_freeze_count(),
                  "before": before, "after": after}}))
"""


def probe(modules: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(rounds=ROUNDS), *modules],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    figures: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return figures


def main() -> str:
    rows = {name: probe(modules) for name, modules in SERVICES.items()}
    lines = [
        "| service | objects tracked after its imports | a full collection | after settle_heap |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['tracked']:,.0f} | {r['before'] * 1000:.1f} ms "
            f"| {r['after'] * 1e6:.1f} µs |"
        )
    table = "\n".join(lines)
    print(f"\nFull garbage collections, median of {ROUNDS} (a fresh interpreter per service)")
    print(table)
    return table


if __name__ == "__main__":
    main()
