"""The choices and defaults the command line offers, in a module that imports nothing: building
the parser (``--help``, and every command before it runs) does not import PyTorch.  The modules
that use them (attention, assess, check) import them from here."""

POSITIONS = ("prefix", "suffix", "random")   # attention: where the copies go
DEFAULT_MAX_COPIES = 8                       # attention: copies inserted, 1..N
TARGETS = ("queries", "documents", "both")   # assess: which side gets the tokens
# attention, assess: where a run's control tokens are drawn from, by cosine sticky score
CONTROL_DRAWS = {"lowest": "a seeded draw from the run's lowest-scored tenth",
                 "middle": "a seeded draw from the tenth around the run's median score"}
LABELS = ("strong_rejected", "weak_verified", "strong_verified")   # the reference's labels, weakest first
