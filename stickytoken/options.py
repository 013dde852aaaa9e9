"""The choices and defaults the command line offers, in a module that imports nothing: building
the parser (``--help``, and every command before it runs) does not import PyTorch.  The modules
that use them (attention, assess, check) import them from here."""

POSITIONS = ("prefix", "suffix", "random")   # attention: where the copies go
DEFAULT_MAX_COPIES = 8                       # attention: copies inserted, 1..N
TARGETS = ("queries", "documents", "both")   # assess: which side gets the tokens
LABELS = ("strong_rejected", "weak_verified", "strong_verified")   # the reference's labels, weakest first
