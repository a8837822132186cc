"""The FineTuneJob API (kubetune.io/v1alpha1), modelled in pydantic v2."""

from .constants import API_VERSION, GROUP, KIND, PLURAL, VERSION
from .finetunejob import FineTuneJob, ObjectMeta
from .spec import FineTuneJobSpec
from .status import Condition, FineTuneJobStatus, Plan

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "ObjectMeta",
    "Plan",
]
