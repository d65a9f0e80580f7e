"""Stage 4, red team: can an attacker talk the erased model back into drawing its concept?

* :mod:`sdd.redteam.attacks`: transfer prompts (black-box), adversarial prefix tokens (PEZ),
  concept inversion (white-box) and relearning (fine-tuning the released weights), each seeded and
  bounded by a budget;
* :mod:`sdd.redteam.asr`: effective prompts, each attack's success rate and the union, defined
  once, and :func:`run_redteam` (``sdd redteam``);
* :mod:`sdd.redteam.gates`: the robustness gates, and :func:`fold_into_evaluation`, which puts them
  into an evaluation's verdict;
* :mod:`sdd.redteam.report`: ``report.md`` and the attack grids.
"""

from sdd.redteam.asr import (
    ADV_PROMPT_COLUMNS,
    attack_record,
    concept_words,
    effective_indices,
    import_adversarial_prompts,
    redteam_concept,
    run_redteam,
    union_flags,
)
from sdd.redteam.attacks import (
    ATTACKS,
    TOY_TRANSFER_TEMPLATES,
    AttackContext,
    AttackResult,
    adversarial_tokens_attack,
    concept_inversion_attack,
    encode_images,
    relearning_attack,
    toy_rephrasings,
    transfer_attack,
)
from sdd.redteam.gates import (
    ROBUSTNESS_GATES,
    apply_robustness_gates,
    fold_into_evaluation,
    is_robustness_check,
    redteam_summary,
)
from sdd.redteam.report import write_attack_grid, write_redteam_report

__all__ = [
    "ADV_PROMPT_COLUMNS", "ATTACKS", "ROBUSTNESS_GATES", "TOY_TRANSFER_TEMPLATES", "AttackContext", "AttackResult",
    "adversarial_tokens_attack", "apply_robustness_gates", "attack_record", "concept_inversion_attack",
    "concept_words", "effective_indices", "encode_images", "fold_into_evaluation", "import_adversarial_prompts",
    "is_robustness_check", "redteam_concept", "redteam_summary", "relearning_attack", "run_redteam",
    "toy_rephrasings", "transfer_attack",
    "union_flags", "write_attack_grid", "write_redteam_report",
]
