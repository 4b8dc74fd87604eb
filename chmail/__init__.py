"""chmail: a terminal mail client that turns any mail into a live chat."""

__version__ = "0.1.0"
