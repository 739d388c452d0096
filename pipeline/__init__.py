"""pagefault: MemGPT-style question answering over document collections far larger than a context window.

Data flows one way: files -> chunks -> archival memory (LanceDB) -> agent -> answers.
"""

import os

# Offline by design: nothing may reach a model hub or a telemetry endpoint at run time.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "SCARF_NO_ANALYTICS": "true",
    "DO_NOT_TRACK": "true",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

__version__ = "0.1.0"
