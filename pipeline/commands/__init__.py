"""One module per `analyze` command; each exposes `command`, a click command. Heavy imports stay inside them."""
