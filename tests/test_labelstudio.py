"""The Label Studio hand-off: tasks out, JSON / JSON-MIN exports back in, every bad answer named.

The export fixtures are written by hand in the shapes Label Studio documents and produces
(labelstud.io/guide/export: "JSON" = tasks with ``annotations`` → ``result`` → ``value.choices``;
"JSON-MIN" = one flat record per annotation with the data fields, ``id``, the choices under the
control tag's name, ``annotator``, ``annotation_id``, ``created_at``, ``updated_at``, ``lead_time``).
"""

from __future__ import annotations

import copy
import json
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")  # the loop package imports it

from asvp_fast.loop.engine.labelstudio import LabelStudioOracle, LabelStudioPending, push  # noqa: E402
from asvp_fast.loop.engine.oracle import LabelsPending, OracleError  # noqa: E402

CLASSES = ["Cat", "Dog", 'Bird & "friends"']
TEXTS = {r: f"pool item number {r}" for r in range(40)}
ROWS = np.array([12, 3, 27, 8], dtype=np.int64)
TRUTH = {12: 0, 3: 2, 27: 1, 8: 0}
TAG = "svpp-round001"


def make_oracle(directory: Path, **kw) -> LabelStudioOracle:
    return LabelStudioOracle(directory, CLASSES, TEXTS.__getitem__, **kw)


def pending_tasks(directory: Path, rows=ROWS, tag=TAG, **kw):
    oracle = make_oracle(directory, **kw)
    with pytest.raises(LabelStudioPending) as info:
        oracle.query(rows, tag)
    return oracle, json.loads(info.value.path.read_text(encoding="utf-8")), info.value


def result(choices, from_name="label", rid="Xk3_pQ9aZ1"):
    return {"value": {"choices": list(choices)}, "id": rid, "from_name": from_name, "to_name": "text",
            "type": "choices", "origin": "manual"}


def annotation(aid, task_id, choices, *, created, updated=None, cancelled=False, from_name="label"):
    """One annotation exactly as Label Studio's JSON export writes it."""
    return {
        "id": aid, "completed_by": 1, "result": [] if cancelled else [result(choices, from_name)],
        "was_cancelled": cancelled, "ground_truth": False, "created_at": created, "updated_at": updated or created,
        "draft_created_at": None, "lead_time": 4.288, "prediction": {}, "result_count": 0,
        "unique_id": f"6e1c5a4e-{aid:04d}", "import_id": None, "last_action": None, "bulk_created": False,
        "task": task_id, "project": 7, "updated_by": 1, "parent_prediction": None, "parent_annotation": None,
        "last_created_by": None,
    }


def ls_task(task_id, data, annotations, predictions=()):
    """One task of a JSON export (Label Studio renumbers the ids it imported)."""
    return {
        "id": task_id, "annotations": list(annotations), "file_upload": "3f1a2b9c-svpp-round001.tasks.json",
        "drafts": [], "predictions": list(predictions), "data": dict(data), "meta": {},
        "created_at": "2024-05-02T09:00:00.000000Z", "updated_at": "2024-05-02T09:30:00.000000Z",
        "inner_id": task_id - 500, "total_annotations": len(annotations),
        "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
        "total_predictions": len(predictions), "comment_count": 0, "unresolved_comment_count": 0,
        "last_comment_updated_at": None, "project": 7, "updated_by": 1, "comment_authors": [],
    }


def annotate_json(tasks, labels):
    """Simulate annotation: the JSON export of the imported tasks, each answered by ``labels[row]``.
    Every other task also gets an older answer that was overruled, and a newer one that was cancelled."""
    out, aid = [], 1000
    for n, task in enumerate(tasks):
        tid = 501 + n
        row = task["data"]["row"]
        anns = []
        if n % 2 == 0:
            wrong = CLASSES[(labels[row] + 1) % len(CLASSES)]
            anns.append(annotation(aid, tid, [wrong], created="2024-05-02T10:00:00.000000Z"))
            anns.append(annotation(aid + 2, tid, [], created="2024-05-02T12:00:00.000000Z", cancelled=True))
        anns.append(annotation(aid + 1, tid, [CLASSES[labels[row]]], created="2024-05-02T11:00:00.000000Z"))
        out.append(ls_task(tid, task["data"], anns, task.get("predictions", [])))
        aid += 3
    return out


def to_json_min(export, from_name="label"):
    """Label Studio's JSON-MIN of a JSON export: one record per annotation that was not cancelled,
    newest first; a task without annotations gives its data and id alone."""
    records = []
    for task in export:
        anns = [a for a in task["annotations"] if not a["was_cancelled"]]
        if not task["annotations"]:
            records.append(dict(task["data"], id=task["id"], annotator={}, annotation_id=None,
                                created_at=None, updated_at=None, lead_time=None))
        for a in sorted(anns, key=lambda a: a["created_at"], reverse=True):
            rec = dict(task["data"], id=task["id"])
            picks = [r["value"] for r in a["result"] if r["from_name"] == from_name]
            if picks:
                one = picks[0]
                rec[from_name] = one["choices"][0] if len(picks) == 1 and len(one["choices"]) == 1 else (
                    one if len(picks) == 1 else picks)
            rec.update(annotator=a["completed_by"], annotation_id=a["id"], created_at=a["created_at"],
                       updated_at=a["updated_at"], lead_time=a["lead_time"])
            records.append(rec)
    return records


def write_export(oracle, records, tag=TAG):
    path = oracle.export_path(tag)
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


# -- export ----------------------------------------------------------------------------------------------
def test_a_batch_is_written_as_label_studio_tasks_with_the_selectors_predictions(tmp_path):
    hints = {12: (1, 0.91), 27: (2, 0.25)}
    oracle, tasks, pending = pending_tasks(tmp_path, hints=hints)
    assert isinstance(pending, LabelsPending) and pending.rows == 4
    assert str(oracle.export_path(TAG)) in str(pending) and "JSON-MIN" in str(pending)
    assert [t["id"] for t in tasks] == [1, 2, 3, 4]
    assert [t["data"] for t in tasks] == [{"text": TEXTS[r], "row": int(r)} for r in ROWS]
    by_row = {t["data"]["row"]: t for t in tasks}
    assert "predictions" not in by_row[3] and "predictions" not in by_row[8]
    (pred,) = by_row[12]["predictions"]
    assert pred["score"] == 0.91 and pred["model_version"] == "asvp_fast"
    assert pred["result"] == [{"id": "asvp-12", "from_name": "label", "to_name": "text", "type": "choices",
                               "value": {"choices": ["Dog"]}}]
    assert by_row[27]["predictions"][0]["result"][0]["value"] == {"choices": [CLASSES[2]]}
    view = ET.fromstring(oracle.config_path().read_text(encoding="utf-8"))
    assert view.tag == "View"
    text, choices = list(view)
    assert (text.tag, text.get("name"), text.get("value")) == ("Text", "text", "$text")
    assert (choices.tag, choices.get("name"), choices.get("toName")) == ("Choices", "label", "text")
    assert [c.get("value") for c in choices] == CLASSES  # escaped in the XML, exact when parsed


def test_without_an_export_the_batch_stays_pending_and_is_not_rewritten(tmp_path):
    oracle, tasks, pending = pending_tasks(tmp_path)
    before = pending.path.read_bytes()
    with pytest.raises(LabelStudioPending):
        make_oracle(tmp_path, hints={12: (0, 1.0)}).query(ROWS, TAG)
    assert pending.path.read_bytes() == before


def test_image_tasks_use_the_image_tag_and_the_given_url(tmp_path):
    oracle = LabelStudioOracle(tmp_path, CLASSES, lambda i: f"/data/pics/{i}.png", kind="image",
                               value=lambda i: f"/data/local-files/?d=pics/{i}.png")
    with pytest.raises(LabelsPending) as info:
        oracle.query(np.array([5]), "r0")
    (task,) = json.loads(info.value.path.read_text())
    assert task["data"] == {"image": "/data/local-files/?d=pics/5.png", "row": 5}
    view = ET.fromstring(oracle.config_path().read_text())
    assert [(e.tag, e.get("name"), e.get("value")) for e in view][0] == ("Image", "image", "$image")
    assert view[1].get("toName") == "image"


# -- round trips -----------------------------------------------------------------------------------------
def test_round_trip_through_a_json_export(tmp_path):
    oracle, tasks, _ = pending_tasks(tmp_path, hints={r: (0, 0.5) for r in TRUTH})
    write_export(oracle, annotate_json(tasks, TRUTH))
    labels = make_oracle(tmp_path).query(ROWS, TAG)
    assert labels.dtype == np.int64 and labels.tolist() == [TRUTH[int(r)] for r in ROWS]


def test_round_trip_through_a_json_min_export(tmp_path):
    oracle, tasks, _ = pending_tasks(tmp_path)
    records = to_json_min(annotate_json(tasks, TRUTH))
    assert records[0]["label"] in CLASSES and {"annotator", "annotation_id", "lead_time"} <= set(records[0])
    assert len(records) == 6  # the overruled answers are records of their own
    write_export(oracle, records)
    assert make_oracle(tmp_path).query(ROWS, TAG).tolist() == [TRUTH[int(r)] for r in ROWS]


def test_a_whole_project_export_skips_other_batches_tasks(tmp_path):
    oracle, first, _ = pending_tasks(tmp_path, rows=np.array([30, 31]), tag="random-round000")
    _, second, _ = pending_tasks(tmp_path)
    labels = {**TRUTH, 30: 1, 31: 1}
    write_export(oracle, annotate_json(first + second, labels))
    assert oracle.query(ROWS, TAG).tolist() == [TRUTH[int(r)] for r in ROWS]


def test_tasks_without_row_map_back_through_their_exported_ids_when_their_data_match(tmp_path):
    oracle, tasks, _ = pending_tasks(tmp_path)
    export = annotate_json(tasks, TRUTH)
    for exported, task in zip(tasks, export):
        del task["data"]["row"]
        task["id"] = exported["id"]  # ids kept (as when the tasks file itself is annotated)
    write_export(oracle, export)
    assert oracle.query(ROWS, TAG).tolist() == [TRUTH[int(r)] for r in ROWS]
    export[1]["data"]["text"] = "someone else's item"
    write_export(oracle, export)
    with pytest.raises(OracleError, match=r"task 2.*someone else's item"):
        oracle.query(ROWS, TAG)


def test_case_and_space_differences_in_a_choice_are_accepted(tmp_path):
    oracle, tasks, _ = pending_tasks(tmp_path)
    records = to_json_min(annotate_json(tasks, TRUTH))
    for rec in records:
        rec["label"] = f"  {rec['label'].upper()} "
    write_export(oracle, records)
    assert oracle.query(ROWS, TAG).tolist() == [TRUTH[int(r)] for r in ROWS]


# -- bad answers: file, task and value named ------------------------------------------------------------
def _json_export(tasks):
    return annotate_json(tasks, TRUTH)


def _bad_unknown_class(tasks):
    e = _json_export(tasks)
    e[1]["annotations"][-1]["result"][0]["value"]["choices"] = ["Platypus"]
    return e, "task 502", "Platypus"


def _bad_several_choices(tasks):
    e = _json_export(tasks)
    e[1]["annotations"][-1]["result"][0]["value"]["choices"] = ["Cat", "Dog"]
    return e, "task 502", "'Cat', 'Dog'"


def _bad_several_results(tasks):
    e = _json_export(tasks)
    ann = e[1]["annotations"][-1]
    ann["result"].append(result(["Dog"], rid="second"))
    return e, "task 502", "several answers"


def _bad_no_annotation(tasks):
    e = _json_export(tasks)
    e[2]["annotations"] = []
    return e, "task 503", "no annotation"


def _bad_all_cancelled(tasks):
    e = _json_export(tasks)
    e[3]["annotations"] = [annotation(9, 504, [], created="2024-05-02T10:00:00Z", cancelled=True)]
    return e, "task 504", "cancelled"


def _bad_other_control(tasks):
    e = _json_export(tasks)
    e[3]["annotations"][-1]["result"][0]["from_name"] = "sentiment"
    return e, "task 504", "sentiment"


def _bad_row_not_asked(tasks):
    e = _json_export(tasks)
    e[0]["data"]["row"] = 39
    return e, "task 501", "39"


def _bad_row_not_a_number(tasks):
    e = _json_export(tasks)
    e[0]["data"]["row"] = "12"
    return e, "task 501", "'12'"


def _bad_conflicting_duplicates(tasks):
    e = _json_export(tasks)
    twin = copy.deepcopy(e[1])
    twin["id"] = 599
    twin["annotations"][-1]["result"][0]["value"]["choices"] = ["Dog"]
    return e + [twin], "task 599", "'Dog'"


def _bad_unknown_id_without_row(tasks):
    e = _json_export(tasks)
    del e[0]["data"]["row"]
    return e, "task 501", "no 'row'"


def _bad_annotations_not_a_list(tasks):
    e = _json_export(tasks)
    e[2]["annotations"] = {"result": []}
    return e, "task 503", "{'result': []}"


def _bad_min_no_label(tasks):
    records = to_json_min(_json_export(tasks))
    del records[-1]["label"]
    return records, f"task {records[-1]['id']}", "no annotation in 'label'"


def _bad_min_multiple_choices(tasks):
    records = to_json_min(_json_export(tasks))
    records[-1]["label"] = {"choices": ["Cat", "Bird"]}
    return records, f"task {records[-1]['id']}", "'Cat', 'Bird'"


def _bad_min_unknown_class(tasks):
    records = to_json_min(_json_export(tasks))
    records[0]["label"] = "Wombat"
    return records, f"task {records[0]['id']}", "Wombat"


def _bad_missing_task(tasks):
    return _json_export(tasks)[:-1], "row 8 (task 4)", "no annotation"


BAD = [_bad_unknown_class, _bad_several_choices, _bad_several_results, _bad_no_annotation, _bad_all_cancelled,
       _bad_other_control, _bad_row_not_asked, _bad_row_not_a_number, _bad_conflicting_duplicates,
       _bad_unknown_id_without_row, _bad_annotations_not_a_list, _bad_min_no_label, _bad_min_multiple_choices,
       _bad_min_unknown_class, _bad_missing_task]


@pytest.mark.parametrize("make", BAD, ids=lambda f: f.__name__[5:])
def test_an_unusable_answer_names_the_file_the_task_and_the_value(tmp_path, make):
    oracle, tasks, _ = pending_tasks(tmp_path)
    records, task, value = make(tasks)
    path = write_export(oracle, records)
    with pytest.raises(OracleError) as info:
        oracle.query(ROWS, TAG)
    message = str(info.value)
    assert str(path) in message and task in message and value in message, message


@pytest.mark.parametrize("text", ["", "[", '[{"id": 1, "data": {"row": 12}', "NaN", '{"a": Infinity}', "\xff", "[" * 100000],
                         ids=["empty", "open", "truncated", "nan", "infinity", "not-utf8", "deep"])
def test_an_unreadable_export_is_an_oracle_error_naming_the_file(tmp_path, text):
    oracle, _, _ = pending_tasks(tmp_path)
    oracle.export_path(TAG).write_bytes(text.encode("latin-1"))
    with pytest.raises(OracleError, match=re.escape(str(oracle.export_path(TAG)))):
        oracle.query(ROWS, TAG)


def test_a_tasks_file_of_another_batch_is_refused(tmp_path):
    oracle, _, _ = pending_tasks(tmp_path)
    with pytest.raises(OracleError, match="another batch"):
        oracle.query(np.array([1, 2, 3, 4]), TAG)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="class 3"):
        make_oracle(tmp_path, hints={1: (3, 0.5)})
    with pytest.raises(ValueError, match="not finite"):
        make_oracle(tmp_path).set_hints({1: (0, float("nan"))})
    with pytest.raises(ValueError, match="data_key"):
        make_oracle(tmp_path, data_key="two words")
    with pytest.raises(ValueError, match="must differ"):
        make_oracle(tmp_path, from_name="text")
    with pytest.raises(ValueError, match="duplicates"):
        LabelStudioOracle(tmp_path, ["a", "a"], str)
    with pytest.raises(ValueError, match="kind"):
        make_oracle(tmp_path, kind="audio")


# -- the optional push -------------------------------------------------------------------------------------
def test_push_without_the_sdk_names_the_package(tmp_path, monkeypatch):
    _, _, pending = pending_tasks(tmp_path)
    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)
    monkeypatch.setitem(sys.modules, "label_studio_sdk.client", None)
    with pytest.raises(ImportError, match="label-studio-sdk"):
        push("http://localhost:8080/projects/3", "key", pending.path)
    with pytest.raises(ValueError, match="projects/<id>"):
        push("localhost:8080", "key", pending.path)


def test_push_imports_the_tasks_through_the_sdk_when_it_is_there(tmp_path, monkeypatch):
    _, tasks, pending = pending_tasks(tmp_path)
    calls = []

    class FakeProjects:
        def import_tasks(self, id, request):
            calls.append((id, request))

    class FakeClient:
        def __init__(self, base_url, api_key):
            calls.append((base_url, api_key))
            self.projects = FakeProjects()

    package, client = types.ModuleType("label_studio_sdk"), types.ModuleType("label_studio_sdk.client")
    client.LabelStudio = FakeClient  # type: ignore[attr-defined]
    package.client = client  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "label_studio_sdk", package)
    monkeypatch.setitem(sys.modules, "label_studio_sdk.client", client)
    assert push("https://ls.example.org/projects/42/data?tab=1", "secret", pending.path) == 4
    assert calls == [("https://ls.example.org", "secret"), (42, tasks)]


# -- fuzz: only OracleError or a valid answer ---------------------------------------------------------------
KEYS = st.sampled_from(["id", "data", "row", "text", "annotations", "completions", "result", "value", "choices",
                        "from_name", "label", "was_cancelled", "skipped", "created_at", "updated_at",
                        "annotation_id", "predictions", "score"])
SCALARS = (st.none() | st.booleans() | st.integers(-3, 40) | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(CLASSES + ["2024-05-02T11:00:00Z", "2024-13-99", ""]) | st.text(max_size=8))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | st.text(max_size=4), inner, max_size=5),
                    max_leaves=30)
FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def check_answer(oracle):
    try:
        labels = oracle.query(ROWS, TAG)
    except OracleError:
        return
    assert labels.shape == ROWS.shape and labels.dtype == np.int64
    assert ((labels >= 0) & (labels < len(CLASSES))).all()


def _replace(tree, path, new):
    if not path:
        return new
    node = tree
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = new
    return tree


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, prefix + (i,))


@pytest.fixture
def exported(tmp_path):
    oracle, tasks, _ = pending_tasks(tmp_path)
    return oracle, annotate_json(tasks, TRUTH)


@FUZZ
@given(doc=JSON)
def test_fuzz_random_json_structures(exported, doc):
    oracle, _ = exported
    write_export(oracle, doc)
    check_answer(oracle)


@FUZZ
@given(data=st.data(), minimal=st.booleans(), new=JSON)
def test_fuzz_damaged_exports(exported, data, minimal, new):
    oracle, export = exported
    doc = to_json_min(export) if minimal else copy.deepcopy(export)
    paths = list(_paths(doc))
    doc = _replace(doc, data.draw(st.sampled_from(paths)), new)
    write_export(oracle, doc)
    check_answer(oracle)


@FUZZ
@given(data=st.data(), minimal=st.booleans())
def test_fuzz_truncated_and_bit_flipped_exports(exported, data, minimal):
    oracle, export = exported
    raw = json.dumps(to_json_min(export) if minimal else export).encode()
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(len(raw) - 1, 0)), st.integers(0, 7)), max_size=3))
    damaged = bytearray(raw[:cut] if data.draw(st.booleans()) else raw)
    for at, bit in flips:
        if at < len(damaged):
            damaged[at] ^= 1 << bit
    oracle.export_path(TAG).write_bytes(bytes(damaged))
    check_answer(oracle)


def test_a_run_hands_batches_to_label_studio_and_continues_from_its_export(tmp_path):
    """The runner end to end: tasks with the proxy's predictions, pending until an export arrives,
    then the same run continues with the annotators' labels (here: the true ones)."""
    from asvp_fast.loop import LabelsPending, parse_config, run
    from asvp_fast.loop.cases.builtin import synthetic_case

    raw = {"methods": ["svpp"], "data": {"case": "synthetic", "pool_size": 200, "test_size": 80},
           "schedule": {"initial": 20, "steps": [{"until": 40, "step": 20}]}, "proxy": {"epochs": 5},
           "training": {"epochs": 1, "batch_size": 32}, "oracle": {"kind": "label-studio", "dir": "ls"}}
    cfg = parse_config(raw)
    case = synthetic_case(pool_size=200, test_size=80, seed=0)
    out = tmp_path / "run"
    for _ in range(3):  # round 0 (random set), round 1 (the proxy's picks), then done
        try:
            run(cfg, out, resume=out.exists(), echo=lambda *a, **k: None, report=False)
            break
        except LabelsPending as pending:
            tasks = json.loads(pending.path.read_text(encoding="utf-8"))
            exported = []
            for task in tasks:
                row = task["data"]["row"]
                answer = case.class_names[int(case.pool_labels[row])]
                result = [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [answer]}}]
                exported.append({"id": 1000 + task["id"], "data": task["data"],
                                 "annotations": [{"id": 1, "result": result, "was_cancelled": False}]})
            pending.export_path.write_text(json.dumps(exported), encoding="utf-8")
    else:
        pytest.fail("the run never finished")
    state = json.loads((out / "state.json").read_text(encoding="utf-8"))
    rounds = state["methods"]["svpp"]
    assert [r["stage"] for r in rounds] == ["done", "done"] and len(rounds[1]["new"]) == 20
    labels = dict(zip(state["labels"]["rows"], state["labels"]["values"]))
    assert all(labels[r] == int(case.pool_labels[r]) for r in rounds[1]["new"])
    # the proxy-selected batch carried the proxy's guess and doubt for each row
    second = sorted((out / "ls").glob("svpp-round001*.tasks.json"))
    assert second, sorted(p.name for p in (out / "ls").iterdir())
    tasks = json.loads(second[0].read_text(encoding="utf-8"))
    assert all(len(t["predictions"]) == 1 and 0.0 <= t["predictions"][0]["score"] <= 1.0 for t in tasks)
