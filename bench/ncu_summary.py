#!/usr/bin/env python3
# Sums the rows of `ncu --csv --page raw --metrics gpu__time_duration.sum,dram__bytes_read.sum` by kernel
# name and grid: launches, total time, share, average time and DRAM bytes read per launch.
#   ncu --clock-control none --launch-skip 3000 --launch-count 720 \
#     --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --page raw \
#     build/bin/cuda_bench --model m.gguf --no-graph --no-microbench --prefill 0 --batches 1 --decode-steps 4 > ncu.csv
#   bench/ncu_summary.py ncu.csv
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
head = None
for i, r in enumerate(rows):
    if 'Kernel Name' in r:
        head = i
        break
h = rows[head]
ki, gi = h.index('Kernel Name'), h.index('Grid Size')
ti, bi = h.index('gpu__time_duration.sum'), h.index('dram__bytes_read.sum')
agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
total = 0.0
for r in rows[head + 2:]:
    if len(r) <= max(ki, ti, bi):
        continue
    try:
        t = float(r[ti].replace(',', ''))
        b = float(r[bi].replace(',', ''))
    except ValueError:
        continue
    key = (r[ki][:60], r[gi])
    a = agg[key]
    a[0] += 1; a[1] += t; a[2] += b
    total += t
print('units: time as ncu reports (%s), bytes (%s)' % (rows[head + 1][ti], rows[head + 1][bi]))
print('total time %.1f over %d kernels' % (total, sum(a[0] for a in agg.values())))
for (k, g), (n, t, b) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:40]:
    print('%5d %10.1f %6.1f%% avg %8.2f  bytes/launch %12.0f  %s %s' % (n, t, 100 * t / total, t / n, b / n, k, g))
