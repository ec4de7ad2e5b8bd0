"""The example adapters, installed as the package ``powerstrip_adapters``.

``powerstrip-adapter NAME --listen HOST:PORT ...`` runs one of them by its bare name, with its own
options (``python adapters/NAME.py ...`` in a checkout, ``python -m powerstrip_adapters.NAME``
where installed). ``null_adapter`` is here too, but it speaks the protocol with the standard
library only and is run as a script.
"""

#: The examples ``powerstrip-adapter NAME`` runs: each module's ``main(argv)``.
EXAMPLES = ("debug", "volumes", "network", "policy")
