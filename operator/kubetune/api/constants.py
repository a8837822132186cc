"""Names that form the API contract: group, version, kinds, label keys.

Kept in one module so the CRD generator, the operator and the CLI agree.
"""

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
CATEGORIES = ["kubetune"]

# Child objects derive their names from the job's; keep room for suffixes such as
# "-a12-0" (attempt, completion index) under the 63-character DNS label limit.
MAX_NAME_LENGTH = 48
