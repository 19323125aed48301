"""`format` values as regexes over the *decoded* string (regex.py's dialect, full match); strings.py turns each
into the JSON texts that write it. Each is exact for its RFC or a documented stricter subset (never looser):

| format | definition | subset |
|---|---|---|
| `date` | RFC 3339 full-date | exact: month lengths, Feb 29 only in leap years (Gregorian: divisible by 4, centuries by 400) |
| `time` | RFC 3339 full-time | the offset (`Z` or ±hh:mm) is required, as in RFC 3339; no leap second (`:60`); upper-case `Z` only |
| `date-time` | RFC 3339 date-time | `date` `T` `time` as above; upper-case `T` only |
| `email` | RFC 5321 Mailbox | a dot-atom local part (no quoted local part) and a domain name (no address literal) |
| `hostname` | RFC 1123 | at most 8 labels of 1–30 letters, digits and inner hyphens (RFC 1123: 63, and 253 in all); no `--` in a label's 3rd and 4th places (no IDNA A-labels, `xn--`) |
| `ipv4` | RFC 2673 dotted quad | exact: four 0–255 without leading zeros |
| `ipv6` | RFC 4291 text forms | exact: 8 groups, `::` once, an embedded IPv4 tail; no zone id |
| `uuid` | RFC 4122 | exact: 8-4-4-4-12 hex digits, either case |
| `uri` | RFC 3986 URI | an absolute URI; no `IPvFuture` host (`[v1.x]`) |
| `json-pointer` | RFC 6901 | exact |

    >>> from decspec.stdlib.grammars.regex import compile_regex
    >>> [compile_regex(FORMATS["date"]).matches(d) for d in ("2024-02-29", "2023-02-29", "1900-02-29", "2000-02-29", "2021-04-31")]
    [True, False, False, True, False]
"""
from __future__ import annotations

MONTH_DAY = (r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
             r"|02-(?:0[1-9]|1[0-9]|2[0-8]))")
LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
DATE = rf"(?:[0-9]{{4}}-{MONTH_DAY}|{LEAP_YEAR}-02-29)"
TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
AN, LDH = "[A-Za-z0-9]", "[A-Za-z0-9-]"


def label(longest: int) -> str:
    """A host name label of 1..longest letters, digits and inner hyphens, without '--' in places 3-4 (IDNA)."""
    return rf"(?:{AN}(?:{LDH}?{AN})?|{AN}{LDH}(?:{AN}{LDH}{{0,{longest - 4}}}|-(?:{AN}{LDH}{{0,{longest - 5}}})?){AN})"


LABEL = label(63)
HOST_LABEL = label(30)  # hostname: at most 8 labels of at most 30 characters (247 in all, under RFC 1123's 253)
OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4 = rf"{OCTET}(?:\.{OCTET}){{3}}"
H16 = r"[0-9a-fA-F]{1,4}"


def ipv6() -> str:
    """RFC 4291 section 2.2: eight 16-bit groups (the last two may be an IPv4 address); `::` stands for one or
    more zero groups, once."""
    def groups(n: int) -> str:  # n groups joined by ':'
        return "" if n == 0 else H16 if n == 1 else rf"{H16}(?::{H16}){{{n - 1}}}"

    forms = [rf"{groups(8)}", rf"{groups(6)}:{IPV4}"]
    for tail_v4 in (False, True):
        total = 6 if tail_v4 else 8  # groups besides the IPv4 tail
        for left in range(total):
            for right in range(total - left):  # `::` stands for at least one group
                right_text = groups(right)
                if tail_v4:
                    right_text = f"{right_text}:{IPV4}" if right else IPV4
                forms.append(f"{groups(left)}::{right_text}")
    return "(?:" + "|".join(forms) + ")"


def uri() -> str:
    """RFC 3986 section 3 `URI` (scheme ":" hier-part ["?" query] ["#" fragment]), without IPvFuture."""
    unreserved, sub_delims, pct = r"A-Za-z0-9._~\-", r"!$&'()*+,;=", r"%[0-9A-Fa-f]{2}"
    pchar = rf"(?:[{unreserved}{sub_delims}:@]|{pct})"
    segment, segment_nz = f"{pchar}*", f"{pchar}+"
    userinfo = rf"(?:[{unreserved}{sub_delims}:]|{pct})*"
    host = rf"(?:\[{ipv6()}\]|(?:[{unreserved}{sub_delims}]|{pct})*)"
    authority = rf"(?:{userinfo}@)?{host}(?::[0-9]*)?"
    hier = rf"(?://{authority}(?:/{segment})*|/(?:{segment_nz}(?:/{segment})*)?|{segment_nz}(?:/{segment})*|)"
    tail = rf"(?:{pchar}|[/?])*"
    return rf"[A-Za-z][A-Za-z0-9+.\-]*:{hier}(?:\?{tail})?(?:#{tail})?"


FORMATS = {
    "date": DATE,
    "time": TIME,
    "date-time": f"{DATE}T{TIME}",
    "email": rf"{ATEXT}+(?:\.{ATEXT}+)*@{LABEL}(?:\.{LABEL})*",
    "hostname": rf"{HOST_LABEL}(?:\.{HOST_LABEL}){{0,7}}",
    "ipv4": IPV4,
    "ipv6": ipv6(),
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "uri": uri(),
    "json-pointer": r"(?:/(?:[^~/]|~[01])*)*",
}
EXACT = ("date", "ipv4", "ipv6", "uuid", "json-pointer")  # exactly their RFC: the others are stricter subsets
TIME_SYNTAX = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?(?:[zZ]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
OVER = {  # for the stricter ones, a superset of their RFC's language (what a `not` or `oneOf` may rely on)
    "time": TIME_SYNTAX,
    "date-time": rf"{DATE}[tT]{TIME_SYNTAX}",
    "email": r"[\s\S]*@[\s\S]*",
    "hostname": r"[A-Za-z0-9.\-]{1,253}",
    "uri": r"[A-Za-z][A-Za-z0-9+.\-]*:[\s\S]*",
}
