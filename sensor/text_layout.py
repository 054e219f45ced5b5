"""What the JSON-lines kernel (sensor/text_kernel.py) writes of each field, shared with its caller
(kubesonar/flow_text.py); no numba here, so the native path never loads it."""

# a field's values are int64; for SECONDS, IPV4 and TEXT a negative value v is a text instead: the
# table's text number -1 - v (a time float.__repr__ writes otherwise, an IPv6 address, a string)
DECIMAL = 0  # the integer
UNSIGNED = 1  # the integer's 64 bits read as unsigned
FLOW_ID = 2  # the 64 bits as 16 hex digits in quotes
SECONDS = 3  # nanoseconds (MIN_SECONDS_NS or more) as float.__repr__ writes them / 1e9: "1767225600.0171502"
IPV4 = 4  # an address's 32 bits as a quoted dotted quad
TEXT = 5  # always a text of the table

WIDEST = {DECIMAL: 20, UNSIGNED: 20, FLOW_ID: 18, SECONDS: 19, IPV4: 17, TEXT: 0}  # bytes at most, texts aside
# from 2**26 s on (1972) a double's unit in the last place is under 10**-8 s and its repr's digits fit
# the kernel's integers; earlier times are texts
MIN_SECONDS_NS = 2**26 * 10**9
