"""Every setting of the pipeline, as pydantic models loaded from ``params/*.yaml``.

``params/`` is the single source of settings for the CLI, DVC and Prefect: each file maps onto one
module here, and all three front ends load it with :func:`load_model` (or the per-file loaders).
An invalid file fails with :class:`ConfigError`, a one-line message naming the field and the fix.

=========================  ===========================  ==============================================
``params/``                module                       models
=========================  ===========================  ==============================================
``distill.yaml``           :mod:`sdd.config.distill`    :class:`DistillConfig`, its sections' models
``eval.yaml``              :mod:`sdd.config.eval`       :class:`EvalConfig` and its judges' settings
``gates.yaml``             :mod:`sdd.config.gates`      :class:`GatesConfig`, :class:`RobustnessGatesConfig`
``redteam.yaml``           :mod:`sdd.config.redteam`    :class:`RedteamConfig` and its attacks' budgets
``concepts.yaml``          :mod:`sdd.config.concepts`   :class:`ConceptSets`, :class:`ConceptSet`
``registry.yaml``          :mod:`sdd.config.registry`   :class:`RegistryConfig` and its guard and check
``toy.yaml``               :mod:`sdd.config.toy`        :class:`ToyConfig`
=========================  ===========================  ==============================================

What they share (strict models, YAML loading, concept-name checks) is :mod:`sdd.config.common`.
"""

from sdd.config.common import (
    MAX_CONCEPT_NAME_LEN,
    PARAMS_DIR,
    ConfigError,
    check_concept_name,
    check_concept_names,
    describe_error,
    format_validation_error,
    load_model,
    one_line,
    option_flag,
    read_yaml,
    shown_value,
    validate,
)
from sdd.config.concepts import ConceptSet, ConceptSets, load_concept_sets
from sdd.config.distill import AdversarialConfig, DistillConfig, LoraSettings, RetentionConfig
from sdd.config.eval import (
    NUDENET_EXPOSED_CLASSES,
    ClipJudgeConfig,
    EvalConfig,
    JudgeConfig,
    NudeNetJudgeConfig,
    load_eval_config,
)
from sdd.config.gates import ConceptGate, GatesConfig, RobustnessGatesConfig, load_gates_config
from sdd.config.redteam import (
    ATTACK_NAMES,
    AdvTokensConfig,
    ConceptInversionConfig,
    CostCurvesConfig,
    RedteamConfig,
    RelearningConfig,
    TransferAttackConfig,
    load_redteam_config,
)
from sdd.config.registry import (
    LOCAL_STORE_DIR,
    GuardConfig,
    PostPromotionCheckConfig,
    RegistryConfig,
    load_checked_registry_config,
    load_registry_config,
)
from sdd.config.toy import ToyConfig

__all__ = [
    "ATTACK_NAMES", "LOCAL_STORE_DIR", "MAX_CONCEPT_NAME_LEN", "NUDENET_EXPOSED_CLASSES", "PARAMS_DIR",
    "AdvTokensConfig", "AdversarialConfig", "ClipJudgeConfig", "ConceptGate", "ConceptInversionConfig",
    "ConceptSet", "ConceptSets", "ConfigError", "DistillConfig", "EvalConfig", "GatesConfig", "GuardConfig",
    "JudgeConfig", "NudeNetJudgeConfig", "PostPromotionCheckConfig", "RedteamConfig", "RegistryConfig",
    "CostCurvesConfig", "RelearningConfig", "LoraSettings",
    "RetentionConfig", "RobustnessGatesConfig", "ToyConfig", "TransferAttackConfig", "check_concept_name",
    "check_concept_names", "describe_error", "format_validation_error", "load_concept_sets", "load_eval_config",
    "load_checked_registry_config", "load_gates_config", "load_model", "load_redteam_config", "load_registry_config",
    "one_line", "option_flag",
    "read_yaml", "shown_value", "validate",
]
