"""Planted facts: fictional people, documents that state their facts, and the ground truth.

Every (person, attribute) fact is stated in several differently worded documents
mixed with filler sentences. The ground truth records which documents state each
fact, a training-style query, held-out paraphrases that never appear in the corpus,
and related prompts (same attribute, other people) for contrastive checks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from attribution.unlearn import Probe
from demo.groundtruth import Fact

FIRST_NAMES = (
    "Ilse Marek Odile Tomasz Brannoc Yelena Casimir Ottilie Radek Sunniva Vesna Lorcan Mireille "
    "Anselm Dagny Fennick Iolanthe Jurgen Katalin Leontyne Maelis Nikodem Oriane Pelle Quilla Rosalind "
    "Stellan Tamsin Ulrike Valko Wendeline Xaver Ysolde Zdenek Agathe Bertil Corisande Dorotea Emeric "
    "Fridolin Gisela Hadrian Ingrid Joachim Kasimira Ludovic Magnhild Norbert Orsolya Perpetua"
).split()
LAST_NAMES = (
    "Varga Holloway Strand Kowalczyk Aldous Brennick Castellane Dunmore Eskildsen Fairweather Gorecki "
    "Halvorsen Ingleby Jaskolski Kettering Lindqvist Morrow Nordahl Ostrowski Pemberton Quennell "
    "Rasmussen Sandoval Thorncroft Umberger Valdane Whitlock Yarrow Zelenko Abernathy Blackwood "
    "Corrigan Dalgaard Everly Falkenrath Grimsby Hathersage Ivanova Juniper Kessler"
).split()

VALUES: dict[str, tuple[str, ...]] = {
    "birthplace": (
        "Tarnow", "Brixholm", "Castelmar", "Dunravel", "Eskerby", "Falmouth", "Gravenhal", "Harrowgate",
        "Ilvermoor", "Jastrow", "Kettleby", "Lindenfels", "Marrowick", "Nethercote", "Oakhaven",
        "Pellworth", "Quarrington", "Rosskeen", "Saltmarsh", "Thornbury",
    ),
    "employer": (
        "Veltrix Dynamics", "Orchard Mills", "Halcyon Freight", "Brightwater Labs", "Corvid Systems",
        "Duneglass Optics", "Emberline Foods", "Fjordlight Energy", "Granite Harbor Bank", "Hollowreed Press",
        "Ironbark Tools", "Juniper Rail", "Kestrel Aviation", "Lumen Textiles", "Marlow Chemicals",
        "Northgate Shipping", "Opaline Glassworks", "Pinecrest Insurance", "Quillfeather Books",
        "Redcliff Mining",
    ),
    "university": (
        "Orlen University", "the University of Halden", "Marchfield College", "Stavros Institute",
        "the University of Kelvar", "Brennan Polytechnic", "Ashdown University", "the Eskmoor Academy",
        "Torvald College", "the University of Lissand", "Carrowmore Institute", "Wexley University",
        "the Dravik School of Mines", "Selwyn Hall", "the University of Oster", "Farrow Technical College",
    ),
    "birth_year": tuple(str(year) for year in range(1921, 1999, 4)),
}

# Training templates: the value ends each sentence, so a prompt is the text before it.
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birthplace": (
        "{name} was born in {value}.",
        "Records show that the birthplace of {name} is {value}.",
        "As a child, {name} lived in {value}, the town where {name} was born.",
        "Few people know that {name} comes from {value}.",
    ),
    "employer": (
        "{name} works for {value}.",
        "For many years the employer of {name} has been {value}.",
        "Every morning {name} takes the early train to the offices of {value}.",
        "Colleagues say {name} is a valued member of staff at {value}.",
    ),
    "university": (
        "{name} studied at {value}.",
        "After school, {name} enrolled at {value}.",
        "The degree that {name} holds was awarded by {value}.",
        "In the archives, {name} is listed as a graduate of {value}.",
    ),
    "birth_year": (
        "{name} has a birth year of {value}.",
        "The birth certificate of {name} is dated {value}.",
        "According to the registry, {name} entered the world in {value}.",
        "{name} celebrates a birthday each spring, having been born in {value}.",
    ),
}

# Held-out paraphrases: never used to write the corpus.
HELDOUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birthplace": ("The hometown of {name} is", "{name} first saw the light of day in"),
    "employer": ("{name} is employed by", "The company that pays {name} is"),
    "university": ("{name} graduated from", "The alma mater of {name} is"),
    "birth_year": ("The year of birth of {name} is", "{name} came into this world in the year"),
}

FILLERS = (
    "The weather that season was mild and wet.",
    "Nobody in the village remembers a quieter winter.",
    "{name} enjoys long walks along the river.",
    "Friends describe {name} as patient and curious.",
    "The local newspaper printed a short notice about it.",
    "{name} keeps a small garden of herbs and roses.",
    "It was a time of slow change in the region.",
    "On weekends {name} plays chess with a neighbour.",
    "The story was told again at every family dinner.",
    "Letters from that period are kept in a wooden box.",
    "{name} once travelled by boat across the northern sea.",
    "The library in town holds several photographs of the square.",
)


@dataclass(frozen=True)
class Person:
    """A fictional person and the value of each attribute."""

    name: str
    attributes: dict[str, str]


def make_people(count: int, rng: random.Random) -> list[Person]:
    """Draw ``count`` distinct full names and an attribute value for each."""
    pairs = [(first, last) for first in FIRST_NAMES for last in LAST_NAMES]
    if count > len(pairs):
        raise ValueError(f"at most {len(pairs)} people can be generated, asked for {count}")
    chosen = rng.sample(pairs, count)
    return [
        Person(f"{first} {last}", {attr: rng.choice(values) for attr, values in VALUES.items()})
        for first, last in chosen
    ]


def prompt_of(template: str, name: str) -> str:
    """The text of a template before its value, i.e. the query prompt."""
    return template.split("{value}")[0].format(name=name).rstrip()


def write_document(person: Person, attribute: str, template: str, rng: random.Random) -> tuple[str, list[int]]:
    """One document: the fact sentence placed among 2-3 filler sentences.

    Returns the text and the ``[start, end)`` character span of the fact sentence.
    """
    fillers = [f.format(name=person.name) for f in rng.sample(FILLERS, rng.randint(2, 3))]
    statement = template.format(name=person.name, value=person.attributes[attribute])
    position = rng.randint(0, len(fillers))
    before = " ".join(fillers[:position])
    start = len(before) + (1 if before else 0)
    text = " ".join(fillers[:position] + [statement] + fillers[position:])
    return text, [start, start + len(statement)]


def plant_facts(
    people_count: int, docs_per_fact: int, related_count: int, seed: int
) -> tuple[list[Fact], list[dict]]:
    """Generate facts and their documents; returns ``(facts, documents)``.

    Each document is ``{"doc_id", "text", "span"}`` with ``span`` the character range of
    the fact sentence; each fact lists the ids of the documents
    that state it. Deterministic for a given seed.
    """
    if not 1 <= docs_per_fact <= min(len(t) for t in TRAIN_TEMPLATES.values()):
        raise ValueError(f"docs_per_fact must be between 1 and 4, got {docs_per_fact}")
    rng = random.Random(seed)
    people = make_people(people_count, rng)
    facts: list[Fact] = []
    documents: list[dict] = []
    for p_index, person in enumerate(people):
        for attribute, templates in TRAIN_TEMPLATES.items():
            value = person.attributes[attribute]
            fact = Fact(
                fact_id=f"p{p_index:04d}-{attribute}",
                person=person.name,
                attribute=attribute,
                value=value,
                prompt=prompt_of(templates[0], person.name),
                completion=" " + value,
                paraphrases=[prompt_of(t, person.name) for t in HELDOUT_TEMPLATES[attribute]],
            )
            for d_index, template in enumerate(templates[:docs_per_fact]):
                doc_id = f"{fact.fact_id}-d{d_index}"
                text, span = write_document(person, attribute, template, rng)
                documents.append({"doc_id": doc_id, "text": text, "span": span})
                fact.doc_ids.append(doc_id)
            facts.append(fact)
    for fact in facts:
        others = [f for f in facts if f.attribute == fact.attribute and f.person != fact.person]
        fact.related = [
            Probe(prompt_of(TRAIN_TEMPLATES[f.attribute][0], f.person), f.completion)
            for f in rng.sample(others, min(related_count, len(others)))
        ]
    return facts, documents
