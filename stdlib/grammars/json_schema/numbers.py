"""Numbers: JSON number texts compared with a bound (`minimum`, `exclusiveMaximum`, ...) and multiples
(`multipleOf`), exactly, by their decimal digits. Constrained numbers are written without an exponent
(`1e3` is refused where `1000` is accepted); a bound is read from its shortest decimal form
(`Decimal(repr(x))`), so `0.1` is one tenth.

    >>> from decspec.stdlib.grammars.regex import compile_regex
    >>> at_most = compile_regex(compare("<=", Decimal("2.5"), integer=False))
    >>> [at_most.matches(s) for s in ("2.5", "2.50", "2.51", "-7", "3", "0.9")]
    [True, True, False, True, False, True]
    >>> by3 = multiple_of(Decimal("1.5"), integer=False)
    >>> [by3.matches(s) for s in ("4.5", "3", "3.0", "-1.5", "1", "4.55")]
    [True, True, True, True, False, False]
"""
from __future__ import annotations

from decimal import Decimal

import numpy as np

from decspec.dsl.diagnostics import excerpt
from decspec.stdlib.grammars.automaton import ByteDFA, finish
from decspec.stdlib.grammars.errors import GrammarError

D = "[0-9]"
NOTHING = "[^\\x00-\\U0010FFFF]"
MAX_MULTIPLE_STATES = 50_000


def either(*options: str) -> str:
    options = tuple(o for o in options if o != NOTHING)
    return NOTHING if not options else options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"


def digit(lo: int, hi: int) -> str:
    return NOTHING if lo > hi else str(lo) if lo == hi else f"[{lo}-{hi}]"


def int_less(n: str) -> str:
    """Canonical non-negative integers (no leading zeros) below `n`."""
    k = len(n)
    out = ["0", f"[1-9]{D}{{0,{k - 2}}}"] if k > 1 else []
    for i in range(k):
        low = 1 if i == 0 and k > 1 else 0
        out.append(n[:i] + digit(low, int(n[i]) - 1) + (f"{D}{{{k - 1 - i}}}" if k - 1 - i else ""))
    return either(*(o for o in out if NOTHING not in o))


def int_greater(n: str) -> str:
    """Canonical non-negative integers above `n`."""
    k = len(n)
    out = [f"[1-9]{D}{{{k},}}"]
    for i in range(k):
        out.append(n[:i] + digit(int(n[i]) + 1, 9) + (f"{D}{{{k - 1 - i}}}" if k - 1 - i else ""))
    return either(*(o for o in out if NOTHING not in o))


def frac(op: str, b: str) -> str:
    """Fraction parts (nothing, or '.' and digits) whose value 0.f stands in `op` to 0.b (b: no trailing zeros)."""
    eq = f"\\.{b}0*" if b else "(?:\\.0+)?"
    if op in ("<", "<="):
        less = NOTHING if not b else either("", "\\." + either(*(
            [b[:i] + digit(0, int(b[i]) - 1) + f"{D}*" for i in range(len(b)) if b[i] != "0"]
            + [b[:i] + "0*" for i in range(1, len(b))])))
        return either(less, eq) if op == "<=" else less
    more = "\\." + either(*([b[:i] + digit(int(b[i]) + 1, 9) + f"{D}*" for i in range(len(b)) if b[i] != "9"]
                            + [f"{b}0*[1-9]{D}*"]))
    return either(more, eq) if op == ">=" else more


def magnitude(op: str, bound: Decimal, integer: bool) -> str:
    """Unsigned number texts whose value stands in `op` to the non-negative `bound`."""
    whole, _, fraction = format(bound, "f").partition(".")
    fraction = fraction.rstrip("0")
    if integer:  # no fraction part at all: compare with the bound's integer part
        same = "" if (op == "<" and fraction) or op == "<=" or (op == ">=" and not fraction) else NOTHING
        any_frac = ""
    else:
        same, any_frac = frac(op, fraction), f"(?:\\.{D}+)?"
    if same != NOTHING:
        same = whole + same
    lesser = op in ("<", "<=")
    other = int_less(whole) if lesser else int_greater(whole)
    return either(other + any_frac if other != NOTHING else NOTHING, same)


def compare(op: str, bound: Decimal, integer: bool) -> str:
    """A regex of the JSON numbers (no exponent; integers only when `integer`) x with `x op bound`."""
    unsigned = f"(?:0|[1-9]{D}*)" + ("" if integer else f"(?:\\.{D}+)?")
    size = abs(bound)
    flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
    if op in ("<", "<="):
        if bound > 0 or (bound == 0 and op == "<="):
            return either(f"-{unsigned}", magnitude(op, size, integer))
        return "-" + magnitude(flipped, size, integer)
    if bound < 0 or (bound == 0 and op == ">="):
        return either(unsigned, "-" + magnitude(flipped, size, integer))
    return magnitude(op, size, integer)


def multiple_of(m: Decimal, integer: bool) -> ByteDFA:
    """The JSON numbers (no exponent) that are integer multiples of `m` > 0: with m = p / 10**k, the digits
    of x * 10**k must form a multiple of p (one residue per state)."""
    sign, digits, exponent = m.normalize().as_tuple()
    p = int("".join(map(str, digits))) * 10 ** max(exponent, 0)
    k = max(-exponent, 0)
    if integer and k:  # an integer is a multiple of p/10^k iff a multiple of p / gcd(p, 10^k)
        p //= np.gcd(p, 10 ** k)
        k = 0
    levels = max(k, 1)  # fraction digits that matter; past k only zeros may follow
    states = 3 + p * (levels + 2)
    if states > MAX_MULTIPLE_STATES:
        needs = states if states < 10**15 else f"about 2^{states.bit_length() - 1}"  # never a 4,000-digit figure
        raise GrammarError(f"multipleOf {excerpt(str(m))} needs an automaton of {needs} states, over the limit of "
                           f"{MAX_MULTIPLE_STATES}")
    # states: 0 start, 1 after '-', 2 after a leading '0'; 3 + r: integer digits with residue r;
    # 3 + p * (1 + j) + r: j fraction digits read (j = 0: right after '.', a digit must follow)
    table = np.full((states, 256), -1, np.int64)
    accepting = np.zeros(states, bool)
    integer_state = lambda r: 3 + r  # noqa: E731
    fraction_state = lambda j, r: 3 + p * (1 + j) + r  # noqa: E731
    table[0, ord("-")] = 1
    for s in (0, 1):
        table[s, ord("0")] = 2
        for d in range(1, 10):
            table[s, 48 + d] = integer_state(d % p)
    for r in range(p):
        for d in range(10):
            table[integer_state(r), 48 + d] = integer_state((10 * r + d) % p)
    for s, r in [(2, 0)] + [(integer_state(r), r) for r in range(p)]:
        accepting[s] = r * 10 ** k % p == 0
        if not integer:
            table[s, ord(".")] = fraction_state(0, r)
    for j in range(levels + 1):
        for r in range(p):
            s = fraction_state(j, r)
            if j > 0:
                accepting[s] = r * 10 ** max(k - j, 0) % p == 0
            if j < k:
                for d in range(10):
                    table[s, 48 + d] = fraction_state(j + 1, (10 * r + d) % p)
            else:
                table[s, ord("0")] = fraction_state(min(j + 1, levels), r)
    return finish(table, accepting)
