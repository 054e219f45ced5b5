"""What the dissection pass finds a payload starts with, so the application layer (sensor/app_layer.py)
reads only the few packets that matter and the flow table knows how each side opened a connection.
Shared by the compiled and the vectorised dissection."""

NONE = 0
JSON = 1  # a TCP payload starting with { or [
HTTP = 2  # a TCP payload starting with "POST ", "PUT " or "HTTP/" (a request with a body, or a response)
TLS_CLIENT_HELLO = 3  # a TCP payload starting with a TLS handshake record holding a ClientHello
ICMP = 4  # an ICMP message that is not an error
HTTP_REQUEST = 5  # another HTTP request line: 3 to 7 capital letters and a space ("GET ", "HEAD ", "PRI ")
TLS_RECORD = 6  # another TLS record header: content type 20-23, version 3.x
# a TCP payload of EXECUTABLE_LEAST bytes or more (the ELF header's fields checked: e_ident, e_type,
# e_machine) starting with an ELF's or a PE's first two bytes (\x7fE, MZ): sensor/executables.py checks
# the header that may follow
EXECUTABLE_START = 7
EXECUTABLE_LEAST = 20
