"""Protocol cores for the HTTP side: sans-IO codecs with no sockets in them.

Each module here parses and encodes one protocol (WebSocket frames, PROXY headers, forwarded
headers) and is driven by the servers, which own the I/O.
"""
