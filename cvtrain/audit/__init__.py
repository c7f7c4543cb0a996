"""``cvtrain audit``: label errors found by fold models (docs/audit.md); the verb itself is ``cvtrain.api.audit``."""
from cvtrain.verbs import callable_package

callable_package(__name__, "cvtrain.api:audit")  # cvtrain.audit(...) whichever was imported first
