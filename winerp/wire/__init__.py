"""The websocket wire, sans-IO: RFC 6455 framing (`websocket`) and the hub's opening handshake (`handshake`)."""
