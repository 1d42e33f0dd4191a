"""The client side: the threaded core both facades share (`core`) and what they share above it (`base`)."""
