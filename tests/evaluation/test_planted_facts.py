"""Planted facts: deterministic, several documents per fact, paraphrases never in the corpus."""

from __future__ import annotations

from evaluation.planted_facts import plant_facts


def test_deterministic_and_complete() -> None:
    facts, docs = plant_facts(people_count=20, docs_per_fact=3, related_count=3, seed=7)
    again, docs_again = plant_facts(people_count=20, docs_per_fact=3, related_count=3, seed=7)
    assert [f.__dict__ for f in facts] == [f.__dict__ for f in again] and docs == docs_again
    assert len(facts) == 20 * 4 and len(docs) == 20 * 4 * 3
    assert len({f.person for f in facts}) == 20
    other, _ = plant_facts(people_count=20, docs_per_fact=3, related_count=3, seed=8)
    assert [f.person for f in other] != [f.person for f in facts]


def test_documents_state_their_fact_in_different_words() -> None:
    facts, docs = plant_facts(people_count=10, docs_per_fact=3, related_count=2, seed=0)
    by_id = {d["doc_id"]: d for d in docs}
    for fact in facts:
        statements = []
        for doc_id in fact.doc_ids:
            doc = by_id[doc_id]
            start, end = doc["span"]
            sentence = doc["text"][start:end]
            assert fact.person in sentence and fact.value in sentence
            statements.append(sentence)
        assert len(set(statements)) == 3
        assert (fact.prompt + fact.completion) in statements[0]


def test_paraphrases_never_appear_in_the_corpus_and_related_are_other_people() -> None:
    facts, docs = plant_facts(people_count=30, docs_per_fact=4, related_count=3, seed=1)
    corpus = "\n".join(d["text"] for d in docs)
    for fact in facts:
        assert len(fact.paraphrases) >= 2
        for paraphrase in fact.paraphrases:
            assert paraphrase not in corpus
        assert len(fact.related) == 3
        assert all(fact.person not in r.prompt for r in fact.related)
