"""An allocation-heavy, deterministic Python workload for tests/real_programs.rs.

Run with PYTHONMALLOC=malloc and PYTHONHASHSEED=0 so every object goes through malloc and the
output is the same under any allocator. stdout: one line per phase with a digest of what it
built, then "done". stderr: whether libheaplens.so is mapped into this process.
"""

import hashlib
import json
import random
import sys
import threading


def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def words(rng, n):
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def phase_dicts(rng):
    table = {}
    for i in range(25_000):
        key = f"k{i}-{rng.randint(0, 1 << 30)}"
        table[key] = [i, str(i) * (i % 7), {"n": i, "sq": i * i}]
    for key in list(table)[::3]:
        del table[key]  # churn: free a third, then grow again
    for i in range(10_000):
        table[f"again{i}"] = (i, f"{i:x}")
    return len(table), digest(sorted(table)[:1000])


def phase_strings(rng):
    ws = words(rng, 15_000)
    text = " ".join(ws)
    parts = text.split(" ")
    upper = text.upper().replace("A", "<a>")
    joined = "|".join(reversed(parts))
    counts = {}
    for w in parts:
        counts[w] = counts.get(w, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    return len(upper), len(joined), top


def phase_json(rng):
    docs = []
    for i in range(120):
        doc = {
            "id": i,
            "tags": words(rng, rng.randint(0, 30)),
            "values": [rng.random() for _ in range(rng.randint(0, 200))],
            "nested": {"a": [{"b": j, "c": str(j) * 5} for j in range(rng.randint(0, 40))]},
        }
        text = json.dumps(doc)
        back = json.loads(text)
        assert back == doc
        docs.append(back)
    return digest(docs)


def phase_buffers(rng):
    # big and growing objects: medium, large and huge blocks, and realloc of a growing buffer
    buf = bytearray()
    blobs = []
    for i in range(200):
        buf += bytes([i % 251]) * rng.randint(1, 60_000)
        blobs.append(bytes(rng.randint(1, 300_000)))
        if i % 3 == 0:
            blobs.pop(0)
    big = [b"x" * (1 << 20) * k for k in range(1, 6)]
    return len(buf), hashlib.sha256(bytes(buf)).hexdigest()[:16], sum(map(len, blobs)), sum(map(len, big))


def worker(seed, out):
    rng = random.Random(seed)
    acc = []
    for _ in range(80):
        doc = {w: [rng.randint(0, 1000) for _ in range(rng.randint(0, 50))] for w in words(rng, 20)}
        acc.append(json.loads(json.dumps(doc)))
        if len(acc) > 50:
            acc = acc[25:]  # objects made here are freed by whichever thread drops them last
    out[seed] = digest(acc)


def phase_threads():
    out = {}
    threads = [threading.Thread(target=worker, args=(seed, out)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [out[k] for k in sorted(out)]


def heaplens_mapped():
    with open("/proc/self/maps") as maps:
        return any("libheaplens.so" in line for line in maps)


def main():
    rng = random.Random(1234)
    print("dicts", *phase_dicts(rng))
    print("strings", *phase_strings(rng))
    print("json", phase_json(rng))
    print("buffers", *phase_buffers(rng))
    print("threads", *phase_threads())
    print("done")
    print(f"heaplens mapped: {heaplens_mapped()}", file=sys.stderr)


main()
