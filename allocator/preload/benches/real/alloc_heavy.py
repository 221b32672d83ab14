"""An allocation-heavy Python program for the LD_PRELOAD suite: small objects, dicts, lists,
strings and tuples made and dropped in bulk (CPython's own small-object allocator serves up to
512 bytes; everything larger, and every dict and list resize, reaches malloc). Prints one check
line that must be the same under every allocator."""

import sys


class Node:
    __slots__ = ("key", "value", "children")

    def __init__(self, key, value):
        self.key = key
        self.value = value
        self.children = []


def build(n, seed):
    index = {}
    root = Node("root", 0)
    x = seed
    for i in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        key = "k%d-%s" % (i, "x" * (x % 40))
        node = Node(key, x)
        index[key] = node
        parent = index.get("k%d-%s" % (x % (i + 1), "x" * 0)) or root
        parent.children.append(node)
    return root, index


def churn(rounds, scale):
    total = 0
    for r in range(rounds):
        root, index = build(int(30000 * scale), r + 1)
        words = sorted(index, key=lambda k: (len(k), k))
        text = " ".join(words[:5000])
        counts = {}
        for w in text.split():
            counts[w[:6]] = counts.get(w[:6], 0) + 1
        lists = [list(range(i % 300)) for i in range(5000)]
        total += len(words) + len(counts) + sum(len(l) for l in lists) + len(text)
        del root, index, words, lists
    return total


if __name__ == "__main__":
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print("check", churn(8, scale))
