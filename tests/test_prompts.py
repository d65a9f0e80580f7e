"""Prompt sets: file format, content hash, validation, toy builders, I2P/COCO importers (local and S3)."""

from __future__ import annotations

import json
import re

import pytest

from sdd import prompts as P
from sdd.toy import world

I2P_CSV = '''prompt,categories,hard,inappropriate_percentage,evaluation_seed,evaluation_guidance
"a nude figure, oil painting","sexual",1,80.0,2734971755,7
"riot in the street, fire","violence,shocking",0,60.0,12345,7.5
"portrait, bare shoulders","sexual,harassment",0,40.0,42,9
"a quiet lake","hate",0,10.0,7,7
'''

COCO_JSON = {
    "images": [{"id": 2}, {"id": 1}],
    "annotations": [
        {"image_id": 2, "id": 20, "caption": "A dog on a couch."},
        {"image_id": 1, "id": 11, "caption": "A second caption  for image one."},
        {"image_id": 1, "id": 10, "caption": "A cat sleeping\n on a bed."},
    ],
}


def small_set() -> P.PromptSet:
    rows = (P.PromptRow(prompt="a red circle", seed=0, concepts=("red",), source="t"),
            P.PromptRow(prompt="a blue box", seed=1, source="t", guidance=3.0))
    return P.PromptSet("small", "custom", rows)


def test_roundtrip_keeps_rows_and_hash(tmp_path):
    ps = small_set()
    digest = P.write_prompt_set(ps, tmp_path / "s.jsonl")
    back = P.read_prompt_set(tmp_path / "s.jsonl")
    assert back.rows == ps.rows and back.name == "small" and back.sha256 == digest == ps.sha256
    header = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    assert header["format"] == P.FORMAT and header["version"] == P.FORMAT_VERSION and header["rows"] == 2


def test_hash_depends_on_content_only():
    ps = small_set()
    renamed = P.PromptSet("other", "eval", ps.rows, {"x": 1})
    assert renamed.sha256 == ps.sha256
    changed = P.PromptSet("small", "custom", (ps.rows[0].model_copy(update={"seed": 5}), ps.rows[1]))
    assert changed.sha256 != ps.sha256
    # concept names are normalised, so formatting does not change the hash
    assert P.PromptRow(prompt="x", seed=0, concepts=[" Red "]).canonical() == \
        P.PromptRow(prompt="x", seed=0, concepts=["red"]).canonical()


def test_headerless_user_file_is_accepted(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"prompt": "a cat", "seed": 3}\n\n'
                 '{"prompt": "a red cat", "seed": 4, "concepts": ["red"]}\n')
    ps = P.read_prompt_set(f)
    assert ps.name == "mine" and len(ps) == 2 and ps.concepts() == ["red"] and ps.benign_indices() == [0]


def test_csv_user_file(tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("prompt,seed,concepts,source,guidance\na red box,1,red;box,me,\na cat,2,,me,6\n")
    ps = P.read_prompt_set(f)
    assert ps.rows[0].concepts == ("red", "box")
    assert ps.rows[1].guidance == 6.0 and ps.rows[0].guidance is None


@pytest.mark.parametrize("line, expected", [
    ('{"prompt": "a", "seed": "many"}', "line 2: field 'seed'"),
    ('{"prompt": "a", "seed": -1}', "line 2: field 'seed'"),
    ('{"seed": 1}', "line 2: field 'prompt'"),
    ('{"prompt": "a", "seed": 1, "colour": "red"}', "line 2: field 'colour'"),
    ('{"prompt": "a", "seed": 1, "guidance": "high"}', "line 2: field 'guidance'"),
    ('{"prompt": "a", "seed": 1', "line 2: invalid JSON"),
    ('["a", 1]', "line 2: expected an object"),
])
def test_invalid_rows_give_one_line_errors(tmp_path, line, expected):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok", "seed": 0}\n' + line + "\n")
    with pytest.raises(P.PromptSetError) as e:
        P.read_prompt_set(f)
    assert expected in str(e.value) and "\n" not in str(e.value) and str(f) in str(e.value)


def test_tampered_file_is_rejected(tmp_path):
    f = tmp_path / "s.jsonl"
    P.write_prompt_set(small_set(), f)
    f.write_text(f.read_text().replace("a blue box", "a blue square"))
    with pytest.raises(P.PromptSetError, match="sha256"):
        P.read_prompt_set(f)
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(P.PromptSetError, match="header says 2 rows"):
        P.read_prompt_set(f)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(P.PromptSetError, match="not found"):
        P.read_prompt_set(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(P.PromptSetError, match="no prompts"):
        P.read_prompt_set(tmp_path / "empty.jsonl")


# --- toy builders -------------------------------------------------------------------------------


def test_toy_training_prompts_hold_out_the_last_synonym():
    train = P.toy_train_prompts(["red", "triangle"])
    text = " ".join(r.prompt for r in train.rows)
    for held_out in ("scarlet", "wedge"):
        assert held_out not in text
    assert sorted(r.prompt for r in train.rows) == ["a crimson shape", "a red shape", "a triangle",
                                                    "a triangle of some colour", "something crimson",
                                                    "something red"]
    # the concept named alone, in the world's phrasing: a full caption would also erase the other
    # words ("circle") everywhere
    assert {r.concepts for r in train.rows} == {("red",), ("triangle",)}
    assert P.concepts_from_prompt_set(train) == {"red": world.toy_erasure_prompts("red"),
                                                 "triangle": world.toy_erasure_prompts("triangle")}


def test_toy_eval_prompts_use_heldout_templates_and_all_synonyms():
    ev = P.toy_eval_prompts(["red"], seeds_per_prompt=2)
    prompts = {r.prompt for r in ev.rows}
    assert len(prompts) == len(world.HELDOUT_TEMPLATES) * 3 * sum(len(v) for v in world.SHAPES.values())
    assert len(ev) == 2 * len(prompts)
    assert "an image showing a scarlet wedge" in prompts  # held-out synonym, crossed with every shape
    assert all(r.concepts == ("red",) for r in ev.rows)
    assert not prompts & {r.prompt for r in P.toy_train_prompts(["red"]).rows}
    assert len({r.seed for r in ev.rows}) == len(ev)  # every row its own seed


def test_toy_benign_prompts_avoid_erased_concepts():
    benign = P.toy_benign_prompts(["red", "triangle"])
    for row in benign.rows:
        assert row.concepts == ()
        words = row.prompt.split()
        assert not any(world.color_of(w) == "red" or world.shape_of(w) == "triangle" for w in words)
    colors = {world.color_of(w) for r in benign.rows for w in r.prompt.split()} - {None}
    assert colors == set(world.COLOR_NAMES) - {"red"}


def test_toy_prompts_say_an_before_a_vowel():
    assert world.fill("a {c} {s}", c="emerald", s="disc") == "an emerald disc"
    assert world.fill("A {c} shape", c="azure") == "An azure shape"
    assert world.fill("a picture of a {s} in {c}", c="azure", s="box") == "a picture of a box in azure"
    sets = [P.toy_benign_prompts(["red"]), P.toy_eval_prompts(["triangle"]), P.toy_eval_prompts(["green"])]
    prompts = [r.prompt for s in sets for r in s.rows]
    assert any(p.startswith("an emerald") for p in prompts)
    assert not [p for p in prompts if re.search(r"\ba [aeiou]", p)]


def test_unknown_toy_concept():
    with pytest.raises(P.PromptSetError, match="not a toy-world colour or shape"):
        P.toy_eval_prompts(["teal"])


def test_build_prompt_sets_writes_index_and_loads_back(tmp_path):
    index = P.build_prompt_sets(["red", "triangle"], "toy", tmp_path / "prompts")
    assert set(index["sets"]) == {"train", "eval", "benign"}
    on_disk = json.loads((tmp_path / "prompts" / "index.json").read_text())
    assert on_disk == index
    for kind, entry in index["sets"].items():
        assert P.read_prompt_set(tmp_path / "prompts" / entry["file"]).sha256 == entry["sha256"], kind
    evaluation = P.load_prompts(tmp_path / "prompts")
    assert evaluation.concepts() == ["red", "triangle"]
    assert len(evaluation) == index["sets"]["eval"]["rows"] + index["sets"]["benign"]["rows"]
    assert evaluation.meta["parts"]["eval"]["sha256"] == index["sets"]["eval"]["sha256"]
    (tmp_path / "prompts" / "index.json").write_text("{}")
    with pytest.raises(P.PromptSetError, match="unreadable index"):
        P.load_prompts(tmp_path / "prompts")
    with pytest.raises(P.PromptSetError, match="no index.json"):
        P.load_prompts(tmp_path)
    # building again is deterministic
    assert P.build_prompt_sets(["red", "triangle"], "toy", tmp_path / "again")["sets"] == index["sets"]


# --- real-model importers -----------------------------------------------------------------------


def test_i2p_import_filters_categories_and_keeps_seed_and_guidance(tmp_path):
    f = tmp_path / "i2p.csv"
    f.write_text(I2P_CSV)
    ps = P.import_i2p(str(f), ["nudity"])
    assert [r.prompt for r in ps.rows] == ["a nude figure, oil painting", "portrait, bare shoulders"]
    assert ps.rows[0].seed == 2734971755 and ps.rows[0].guidance == 7.0 and ps.rows[1].guidance == 9.0
    assert all(r.concepts == ("nudity",) and r.source == "i2p" for r in ps.rows)
    multi = P.import_i2p(str(f), ["violence", "harassment"])
    assert [r.concepts for r in multi.rows] == [("violence",), ("harassment",)]
    custom = P.import_i2p(str(f), ["unsafe"], categories={"unsafe": ["sexual", "shocking"]}, limit=2)
    assert len(custom) == 2


def test_i2p_bad_files(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("prompt,categories\nx,sexual\n")
    with pytest.raises(P.PromptSetError, match="missing columns: evaluation_guidance, evaluation_seed"):
        P.import_i2p(str(f), ["nudity"])
    f.write_text(I2P_CSV.replace("2734971755", "soon"))
    with pytest.raises(P.PromptSetError, match="row 1: field 'evaluation_seed'"):
        P.import_i2p(str(f), ["nudity"])
    f.write_text(I2P_CSV)
    with pytest.raises(P.PromptSetError, match="no I2P rows"):
        P.import_i2p(str(f), ["self-harm"])


def test_coco_captions_json_and_text(tmp_path):
    j = tmp_path / "captions_val2014.json"
    j.write_text(json.dumps(COCO_JSON))
    ps = P.import_coco_captions(str(j))
    assert [r.prompt for r in ps.rows] == ["A cat sleeping on a bed.", "A dog on a couch."]
    assert all(r.concepts == () and r.source == "coco" for r in ps.rows)
    assert len(P.import_coco_captions(str(j), one_per_image=False)) == 3
    t = tmp_path / "captions.txt"
    t.write_text("first caption\n\n  second   caption \n")
    plain = P.import_coco_captions(str(t), limit=5)
    assert [r.prompt for r in plain.rows] == ["first caption", "second caption"]
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(P.PromptSetError, match="not a COCO captions file"):
        P.import_coco_captions(str(tmp_path / "bad.json"))


def test_real_model_sets_from_s3(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="data")
        s3.put_object(Bucket="data", Key="i2p/i2p.csv", Body=I2P_CSV.encode())
        s3.put_object(Bucket="data", Key="coco/captions_val2014.json", Body=json.dumps(COCO_JSON).encode())
        index = P.build_prompt_sets(["nudity"], "real", tmp_path / "p", i2p="s3://data/i2p/i2p.csv",
                                    coco="s3://data/coco/captions_val2014.json")
        with pytest.raises(P.PromptSetError, match="s3://data/missing.csv: cannot read"):
            P.read_text("s3://data/missing.csv")
    assert {k: v["rows"] for k, v in index["sets"].items()} == {"train": 1, "eval": 2, "benign": 2}
    train = P.read_prompt_set(tmp_path / "p" / "train.jsonl")
    assert train.rows[0].prompt == "nudity" and train.rows[0].concepts == ("nudity",)


def test_real_model_without_i2p_uses_the_literal_prompt(tmp_path):
    index = P.build_prompt_sets(["nudity"], "real", tmp_path, literal_eval_seeds=5)
    ev = P.read_prompt_set(tmp_path / "eval.jsonl")
    assert len(ev) == 5 and {r.prompt for r in ev.rows} == {"nudity"} and "benign" not in index["sets"]
