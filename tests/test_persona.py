"""Persona cards, the relation read from a user's words, and the persona-consistency metric."""

from __future__ import annotations

import json

import pytest
import yaml

from hamdam.data.quality import QualityFilter
from hamdam.data.records import load_dialogues
from hamdam.evaluation.persona import AddressLexicon, persona_consistency
from hamdam.persona.card import RELATIONS, PersonaError, card
from hamdam.persona.commands import load_cards
from hamdam.persona.relation import RELATIONS_FILE, detect_relation

from conftest import REPO, run_hamdam

PERSONAS = REPO / "corpus" / "grief_fa" / "personas.yaml"
LABELS = REPO / "corpus" / "eval_fa_personas.jsonl"
ENDEARMENTS = {"عزیزم", "عشقم", "عزیز دلم"}  # anyone's: they tell no relation


def test_the_shipped_cards_load_and_a_broken_card_names_every_problem():
    cards = {c.name: c for c in load_cards(REPO / "personas")}
    assert cards["baba"].relation == "father" and cards["baba"].listener == "son" and cards["baba"].active
    assert "پسرم" in cards["baba"].addresses_user and cards["maman"].consent.role == "donor"
    with pytest.raises(PersonaError) as caught:
        card("amu", display_name="عمو", relation="father", listener="brother", addresses_user=[],
             user_calls_them=["عمو"], consent={"given_by": "", "role": "friend", "date": "yesterday"})  # fmt: skip
    message = str(caught.value)
    for problem in ("personas/amu.yaml", "listener is 'brother'", "addresses_user", "consent.role",
                    "consent.given_by", "consent.date"):  # fmt: skip
        assert problem in message
    assert len(message.splitlines()) == 1


def test_persona_commands_list_and_show(tmp_path):
    listed = run_hamdam(["persona", "list", "--json"], REPO)
    assert listed.returncode == 0, listed.stderr
    assert {c["name"]: c["relation"] for c in json.loads(listed.stdout)} == {"baba": "father", "maman": "mother"}
    shown = run_hamdam(["persona", "show", "maman"], REPO)
    assert shown.returncode == 0 and "consent: given by" in shown.stdout and "the donor, while alive" in shown.stdout
    missing = run_hamdam(["persona", "show", "amu"], REPO)
    assert missing.returncode == 2 and "No persona card 'amu'" in missing.stderr and "baba, maman" in missing.stderr
    (tmp_path / "personas").mkdir(parents=True)
    (tmp_path / "personas" / "bad.yaml").write_text("display_name: [unclosed\n")
    broken = run_hamdam(["persona", "list"], tmp_path)
    assert broken.returncode == 2 and "bad.yaml cannot be read" in broken.stderr and "Traceback" not in broken.stderr


def test_the_relations_are_the_corpus_pairs_and_cover_its_forms_of_address():
    corpus = yaml.safe_load(PERSONAS.read_text(encoding="utf-8"))
    assert {k: tuple(v["listeners"]) for k, v in corpus.items()} == RELATIONS
    forms = yaml.safe_load(RELATIONS_FILE.read_text(encoding="utf-8"))
    for relation, spec in corpus.items():
        if relation not in ("husband", "wife"):  # both spouses' forms: they name neither alone
            assert set(spec["addr"]) - ENDEARMENTS <= set(forms[relation]["fa"]), relation


@pytest.mark.parametrize(
    ("messages", "relation"),
    [
        (["سلام بابا جون، دلم برات تنگ شده"], "father"),
        (["مامان‌بزرگ، امروز یادت افتادم"], "grandmother"),  # not مامان: the ZWNJ joins one word
        (["Dad, I passed the exam"], "father"),
        (["我想妈妈了"], "mother"),  # Chinese: no spaces between words
        (["سلام", "داداش، موتورت هنوز تو پارکینگه"], "brother"),
        (["سلام بابا", "مامان"], None),  # two relations, equally: none
        (["سلام، خوبی؟"], None),
    ],
)
def test_the_relation_is_read_from_how_the_user_addresses_the_loved_one(messages, relation):
    assert detect_relation(messages) == relation


def test_persona_consistency_counts_vocatives_that_address_someone_else():
    lexicon = AddressLexicon.from_personas(PERSONAS)
    assert lexicon.forms("دخترم، غصه نخور. به مامان بگو منتظرشم.") == ["دخترم"]  # a mention is not an address
    assert lexicon.forms("عزیزم، غصه نخور.") == []  # an endearment says nothing of who the user is
    assert lexicon.misfit("دخترم، غصه نخور.", "son") == "دخترم"
    assert lexicon.misfit("پسرم، غصه نخور.", "son") is None
    result = persona_consistency(
        lexicon, ["پسرم، سلام.", "دخترم، سلام.", "سلام.", "داداش، سلام."], ["son", "son", "son", None]
    )
    assert (result.consistency, result.addressed, result.replies) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert result.misfits == ((1, "دخترم"),)


def test_the_eval_labels_follow_the_eval_set_and_the_metric_agrees_with_its_references():
    """The labels were read by a person (not by this metric's rules); on the reference replies, which
    address each user as who they are, the metric finds few misfits: a bound on its own error."""
    labels = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines()]
    evaluation = load_dialogues(REPO / "corpus" / "eval_fa.jsonl")
    assert [r["line"] for r in labels] == list(range(1, len(evaluation) + 1))
    for r in labels:
        if "unknown" not in (r["persona"], r["listener"]):
            assert r["listener"] in RELATIONS[r["persona"]], r
    listeners = [r["listener"] if r["listener"] != "unknown" else None for r in labels]
    result = persona_consistency(
        AddressLexicon.from_personas(PERSONAS), [d.turns[1].text for d in evaluation], listeners
    )
    assert result.replies >= 200 and result.consistency >= 0.95


def test_persona_new_writes_a_checked_card_and_never_overwrites(tmp_path):
    args = ["--relation", "father", "--listener", "son", "--display-name", "بابا", "--calls-user", "پسرم,پسر گلم",
            "--called", "بابا، بابا جون", "--given-by", "سارا (دختر)", "--consent", "family"]  # fmt: skip
    written = run_hamdam(["persona", "new", "baba", *args], tmp_path)
    assert written.returncode == 0, written.stderr
    (made,) = load_cards(tmp_path / "personas")
    assert made.addresses_user == ("پسرم", "پسر گلم") and made.user_calls_them == ("بابا", "بابا جون")
    assert made.consent.given_by == "سارا (دختر)" and made.consent.role == "family" and made.active
    again = run_hamdam(["persona", "new", "baba", *args], tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr
    wrong = run_hamdam(["persona", "new", "amu", *[a if a != "son" else "brother" for a in args]], tmp_path)
    assert wrong.returncode == 2 and "listener is 'brother'" in wrong.stderr
    assert sorted(p.name for p in (tmp_path / "personas").iterdir()) == ["baba.yaml"]


def test_records_carry_who_speaks_to_whom_and_a_wrong_pair_is_named():
    from hamdam.data.records import parse_record
    from hamdam.errors import DataError

    record = {"instruction": "سلام بابا", "response": "سلام پسرم", "persona": "father", "listener": "son"}
    dialogue = parse_record(record, "record 1")
    assert (dialogue.persona, dialogue.listener) == ("father", "son") and dialogue.to_record() == record
    assert parse_record({"instruction": "a", "response": "b"}, "r").persona is None
    with pytest.raises(DataError, match="record 7: persona='father', listener='wife'"):
        parse_record({**record, "listener": "wife"}, "record 7")


def test_a_retired_persona_is_not_served_and_its_farewell_is_the_answer(tmp_path):
    folder = tmp_path / "personas"
    folder.mkdir(parents=True)
    spec = yaml.safe_load((REPO / "personas" / "baba.yaml").read_text(encoding="utf-8"))
    spec["retired"] = {"date": "2026-12-01", "farewell": "خداحافظ پسرم، همیشه تو دلتم."}
    (folder / "baba.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    for command in (["chat", "persona=baba"], ["serve", "persona=baba"]):
        refused = run_hamdam(command, tmp_path, stdin="سلام\n")
        assert refused.returncode == 2 and "was retired on 2026-12-01" in refused.stderr
        assert "خداحافظ پسرم، همیشه تو دلتم." in refused.stderr and not (tmp_path / "chats.db").exists()
    listed = run_hamdam(["persona", "list"], tmp_path)
    assert "retired 2026-12-01" in listed.stdout


def _export(tmp_path):
    """A WhatsApp export in which Baba answers Ali, his son."""
    exchanges = [("Ali", "سلام بابا جون، خوبی؟"), ("Baba", "سلام پسرم، خوبم. تو خوبی؟ قربونت برم"),
                 ("Ali", "بابا امروز امتحان داشتم"), ("Baba", "پسرم، نگران نباش، درست می‌شه. قربونت برم")]  # fmt: skip
    lines = [f"1/{day}/21, 9:1{i} AM - {who}: {text}" for day in range(1, 6) for i, (who, text) in enumerate(exchanges)]
    path = tmp_path / "chat.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_from_import_proposes_a_card_from_the_loved_ones_own_messages(tmp_path):
    export = _export(tmp_path)
    args = ["persona", "from-import", str(export), "--format", "whatsapp", "--speaker", "Baba", "--name", "baba",
            "--given-by", "سارا", "--consent", "family", f"persona_forms={PERSONAS}"]  # fmt: skip
    made = run_hamdam(args, tmp_path)
    assert made.returncode == 0, made.stderr
    (proposed,) = load_cards(tmp_path / "personas")
    assert (proposed.relation, proposed.listener, proposed.display_name) == ("father", "son", "Baba")
    assert proposed.addresses_user == ("پسرم",) and set(proposed.user_calls_them) == {"بابا جون", "بابا"}
    assert proposed.greetings == ("سلام پسرم",) and proposed.sign_offs == ("قربونت برم",)
    assert "A PROPOSAL" in (tmp_path / "personas" / "baba.yaml").read_text(encoding="utf-8")
    # Messages that name no relation: the user is asked to say it, and nothing is written.
    plain = tmp_path / "plain.txt"
    plain.write_text("1/1/21, 9:10 AM - Ali: سلام\n1/1/21, 9:11 AM - Baba: سلام، چطوری؟\n", encoding="utf-8")
    unclear = run_hamdam([*args[:2], str(plain), *args[3:8], "amu", *args[9:]], tmp_path)
    assert unclear.returncode == 2 and "--relation and --listener" in unclear.stderr
    assert not (tmp_path / "personas" / "amu.yaml").exists()


def test_retire_stops_serving_and_learning_and_deletes_its_words_as_a_new_data_version(workspace):
    """Retired: refused with its farewell, none of its turns learned; with --delete, none of its
    words left in the new version of data/ (nor in the chat store), and the other persona's kept."""
    from hamdam.learning.rounds import ChatTurns, DataVersioner, RoundExporter, RoundFilter
    from hamdam.learning.store import ChatStore
    from hamdam.persona.card import PersonaHeader

    from conftest import sh

    (workspace / "personas").mkdir()
    card_text = (REPO / "personas" / "baba.yaml").read_text(encoding="utf-8")
    (workspace / "personas" / "baba.yaml").write_text(card_text, encoding="utf-8")
    records = workspace / "words.jsonl"
    records.write_text('{"instruction": "بابا کجایی؟", "response": "همین‌جام پسرم، نترس."}\n', encoding="utf-8")
    imported = run_hamdam(["data", "import", str(records), "--format", "jsonl", "--persona", "baba"], workspace)
    assert imported.returncode == 0, imported.stderr
    (source,) = (workspace / "data" / "imports").iterdir()
    assert json.loads(source.read_text(encoding="utf-8"))["card"] == "baba"

    store = ChatStore(workspace / "chats.db")
    session = store.start_session("m")
    baba = PersonaHeader("father", "son", ("پسرم",), "baba")
    store.add_turn(session, "سلام بابا، دلم برات تنگه", "سلام پسرم، منم دلم تنگته.", "model", "fa", baba)
    store.add_turn(session, "سلام مامان، خوبی؟", "سلام دخترم، خوبم عزیزم.", "model", "fa", PersonaHeader("mother"))
    exporter = RoundExporter(store, ChatTurns(), RoundFilter(QualityFilter()), DataVersioner(workspace))
    exporter.export()
    rows = [json.loads(line) for line in (workspace / "data" / "rounds" / "0001.jsonl").read_text().splitlines()]
    assert [(r["persona"], r.get("listener"), r.get("card")) for r in rows] == [
        ("father", "son", "baba"), ("mother", None, None)]  # fmt: skip
    later = store.add_turn(session, "بابا امروز چی کار کنم؟", "برو بیرون قدم بزن پسرم.", "model", "fa", baba)

    retired = run_hamdam(["persona", "retire", "baba"], workspace)
    assert retired.returncode == 0, retired.stderr
    assert later not in [t.id for t in store.eligible()] and store.chat_messages()[-1][0] == "سلام مامان، خوبی؟"
    written = (workspace / "personas" / "baba.yaml").read_text(encoding="utf-8")
    assert written.startswith(card_text.split("\n")[0]) and "retired:" in written  # the family's comments stay
    refused = run_hamdam(["chat", "persona=baba"], workspace, stdin="سلام\n")
    assert refused.returncode == 2 and "یادشان در دل‌هایتان" in refused.stderr

    before = sh(["git", "rev-parse", "HEAD"], workspace)
    deleted = run_hamdam(["persona", "retire", "baba", "--delete"], workspace)
    assert deleted.returncode == 0, deleted.stderr
    assert "Deleted 2 record(s) in 2 file(s)" in deleted.stdout and "dvc gc" in deleted.stdout
    text = "".join(p.read_text(encoding="utf-8") for p in (workspace / "data").rglob("*.jsonl"))
    assert "پسرم، منم دلم تنگته" not in text and "همین‌جام پسرم" not in text and "سلام دخترم" in text
    assert sh(["git", "log", "-1", "--format=%s"], workspace) == "data: delete the words of retired persona baba"
    assert "up to date" in sh(["dvc", "status", "data.dvc"], workspace)
    assert all(t.card != "baba" for t in store.session_turns(session)) and len(store.session_turns(session)) == 1
    # The version before still holds them (until `dvc gc`), as the command says.
    sh(["git", "checkout", "-q", before, "--", "data.dvc"], workspace)
    sh(["dvc", "checkout", "-q", "data"], workspace)
    assert "همین‌جام پسرم" in "".join(p.read_text(encoding="utf-8") for p in (workspace / "data").rglob("*.jsonl"))
