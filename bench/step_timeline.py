#!/usr/bin/env python3
"""Where a pipeline step's time goes, from the debug lines of one host's
coordinator and workers (`--log-level debug`; `serve_bench --child-log-level
debug` prints them on stderr with a [child] prefix).

The coordinator logs when it launches a step and when the answer comes back;
each worker logs when a step arrived and when its phases ended. Every
timestamp is in Unix microseconds from one host's clock, so the lines line up.
For the steps of --min-sequences to --max-sequences sequences,
prints the median of each leg, in order along the pipeline, and what the
coordinator spends between an answer and its next launch.

Usage: step_timeline.py LOG [--min-sequences N]
"""
import argparse
import re
import statistics
from collections import defaultdict

LAUNCHED = re.compile(r"step ([0-9a-f]{16}) launched at (\d+) us: (\d+) sequences")
ANSWERED = re.compile(r"step ([0-9a-f]{16}) answered at (\d+) us")
WORKER = re.compile(
    r"worker (\S+): step ([0-9a-f]{16}): (\d+) sequences, arrived at (\d+) us; after ([-\d.]+) ms "
    r"its rows were in, ([-\d.]+) computed, ([-\d.]+) sampled, ([-\d.]+) handed on")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log")
    parser.add_argument("--min-sequences", type=int, default=32)
    parser.add_argument("--max-sequences", type=int, default=1 << 30)
    args = parser.parse_args()

    # serve_bench starts each setup's cluster after a "=== setup: NAME" line.
    segments = [("", [])]
    with open(args.log, errors="replace") as lines:
        for line in lines:
            if line.startswith("=== setup: "):
                segments.append((line[len("=== setup: "):].strip(), []))
            else:
                segments[-1][1].append(line)
    for name, lines in segments:
        if any(LAUNCHED.search(line) for line in lines):
            if name:
                print(f"\n{name}")
            report(lines, args.min_sequences, args.max_sequences)


def report(lines, min_sequences, max_sequences):
    launched, answered, sizes = {}, {}, {}
    events = []  # (time us, kind, step) in the coordinator's order
    stages = defaultdict(dict)  # worker -> step -> (arrived us, rows in, computed, sampled, handed on)
    for line in lines:
        if m := LAUNCHED.search(line):
            launched[m[1]] = int(m[2])
            sizes[m[1]] = int(m[3])
            events.append((int(m[2]), "launch", m[1]))
        elif m := ANSWERED.search(line):
            answered[m[1]] = int(m[2])
            events.append((int(m[2]), "answer", m[1]))
        elif m := WORKER.search(line):
            stages[m[1]][m[2]] = (int(m[4]),) + tuple(float(m[i]) for i in range(5, 9))

    wanted = lambda step: min_sequences <= sizes.get(step, 0) <= max_sequences
    steps = [s for s in launched if s in answered and wanted(s)]
    if not steps:
        print(f"no answered steps of {min_sequences}+ sequences")
        return
    workers = sorted(stages)
    legs = defaultdict(list)
    for step in steps:
        previous_end, previous_name = launched[step], "launch"
        for w in workers:
            if step not in stages[w]:
                continue
            arrived, rows_in, computed, sampled, handed_on = stages[w][step]
            legs[f"{previous_name} -> {w} arrival"].append((arrived - previous_end) / 1000)
            legs[f"{w}: arrival -> rows in"].append(rows_in)
            legs[f"{w}: rows in -> computed"].append(computed - rows_in)
            if sampled >= 0:
                legs[f"{w}: computed -> sampled"].append(sampled - computed)
                legs[f"{w}: sampled -> handed on"].append(handed_on - sampled)
            else:
                legs[f"{w}: computed -> handed on"].append(handed_on - computed)
            previous_end, previous_name = arrived + 1000 * handed_on, f"{w} handed on"
        legs[f"{previous_name} -> answer"].append((answered[step] - previous_end) / 1000)
        legs["launch -> answer (whole step)"].append((answered[step] - launched[step]) / 1000)

    # The coordinator's turn: from an answer to the next launch.
    events.sort()
    turns = []
    for (t, kind, step), (t_next, kind_next, _) in zip(events, events[1:]):
        if kind == "answer" and kind_next == "launch" and wanted(step):
            turns.append((t_next - t) / 1000)

    print(f"{len(steps)} steps of {min_sequences} to {min(max_sequences, max(sizes.values()))} sequences")
    print("| leg | median ms | p90 ms |\n|---|---|---|")
    for name, values in list(legs.items()) + [("coordinator: answer -> next launch", turns)]:
        if not values:
            continue
        values = sorted(values)
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"| {name} | {statistics.median(values):.3f} | {p90:.3f} |")


if __name__ == "__main__":
    main()
