"""A stack of slots shared by every CPU without a lock: R. K. Treiber's
(IBM RJ 5118, 1986), its head word tagged against ABA.

Slots are indices into an array that holds each slot's link (the next slot
down) while it is on the stack; what the slot holds otherwise is the
owner's business.  The head word is (tag << 32) | (top + 1), 0 in the low
half meaning empty.  Every successful push or pop adds one to the tag, so a
compare-and-swap whose expected head was read before another CPU popped
that top, used it and pushed it back fails, where an untagged head would
match and splice in a link read from a slot that has since been reused
(the ABA problem).  The tag wraps after 2**32 changes between one CPU's
read and its compare-and-swap: not a case that arises.

Both operations are lock-free: a compare-and-swap fails only because
another CPU's succeeded, so some CPU completes in a bounded number of its
own steps, and a CPU stopped anywhere stalls no one.  A pop may read the
link of a slot that another CPU has just taken and is writing: the value
is garbage, and the compare-and-swap then fails, because that CPU's pop
changed the tag.  The slots live as long as the array, so the read itself
is always safe, as it would not be with memory that is freed.
"""
from hwmodel.cpu import cas, hot, load, store

MASK32 = 0xFFFFFFFF
EMPTY = 0


@hot
def push(head, h, links, slot):
    """Slot `slot` onto the stack whose head is head[h]; the number of
    failed compare-and-swaps it took."""
    failed = 0
    while True:
        old = load(head, h)
        store(links, slot, old & MASK32)
        new = (((old >> 32) + 1) << 32) | (slot + 1)
        if cas(head, h, old, new) == old:
            return failed
        failed += 1


@hot
def pop(head, h, links):
    """(the top slot or -1 when empty, failed compare-and-swaps)."""
    failed = 0
    while True:
        old = load(head, h)
        top = old & MASK32
        if top == 0:
            return -1, failed
        new = (((old >> 32) + 1) << 32) | load(links, top - 1)
        if cas(head, h, old, new) == old:
            return top - 1, failed
        failed += 1


def chain(links, slots):
    """The head word (tag 0) of a stack holding `slots`, first on top,
    its links written: for setting a stack up before any CPU runs."""
    below = 0
    for slot in reversed(slots):
        links[slot] = below
        below = slot + 1
    return below


def walk(head_word, links, bound):
    """The slots on a stack, top first, read while no CPU runs; None if
    it holds more than `bound` (a cycle)."""
    out = []
    top = int(head_word) & MASK32
    while top:
        if len(out) > bound:
            return None
        out.append(top - 1)
        top = int(links[top - 1]) & MASK32
    return out
