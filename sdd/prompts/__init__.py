"""Stage 1, prompts: what to erase and what to measure it on.

* :mod:`sdd.prompts.concepts`: a :class:`Concept` (name and prompts) and its hash, concept sets'
  normal form and hash (the flows key run folders on it, re-erase compares it with production);
* :mod:`sdd.prompts.sets`: prompt sets, the versioned, content-hashed lists of (prompt, seed) that
  erasure and evaluation use, and their file format (read, write, load a folder);
* :mod:`sdd.prompts.toy` and :mod:`sdd.prompts.real`: the sets of the toy world, and of real models
  (the literal concept, I2P, COCO captions);
* :mod:`sdd.prompts.build`: ``sdd prompts build``, every set of some concepts at once.
"""

from sdd.prompts.build import build_prompt_sets
from sdd.prompts.concepts import (
    Concept,
    concept_set_hash,
    concepts_hash,
    concepts_updated_payload,
    default_concepts,
    normalise_concepts,
)
from sdd.prompts.real import I2P_CATEGORY_ALIASES, import_coco_captions, import_i2p, literal_prompts
from sdd.prompts.sets import (
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    SET_KINDS,
    PromptRow,
    PromptSet,
    PromptSetError,
    concat,
    concepts_from_prompt_set,
    content_hash,
    limit_rows,
    load_prompts,
    read_prompt_set,
    read_text,
    spread,
    write_prompt_set,
)
from sdd.prompts.toy import toy_benign_prompts, toy_eval_prompts, toy_train_prompts

__all__ = [
    "FORMAT", "FORMAT_VERSION", "I2P_CATEGORY_ALIASES", "INDEX_FILE", "SET_KINDS", "Concept", "PromptRow",
    "PromptSet", "PromptSetError", "build_prompt_sets", "concat", "concept_set_hash", "concepts_from_prompt_set",
    "concepts_hash", "concepts_updated_payload", "content_hash", "default_concepts", "import_coco_captions",
    "import_i2p", "limit_rows", "literal_prompts", "load_prompts", "normalise_concepts", "read_prompt_set",
    "read_text", "spread", "toy_benign_prompts", "toy_eval_prompts", "toy_train_prompts", "write_prompt_set",
]
