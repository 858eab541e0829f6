"""Fixed molecules for chem tests (never random samples)."""

from __future__ import annotations

import pytest

# Approved drugs and common fragments, with salts, charges and stereo on purpose.
DRUGS = [
    "CC(=O)Oc1ccccc1C(=O)O",                      # aspirin
    "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O",            # (S)-ibuprofen
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",               # caffeine
    "CC(=O)Nc1ccc(O)cc1",                         # paracetamol
    "[Na+].[O-]C(=O)c1ccccc1",                    # sodium benzoate
    "Cl.CN(C)CCCN1c2ccccc2CCc2ccccc21",           # imipramine hydrochloride
    "C[NH+](C)CCOC(c1ccccc1)c1ccccc1.[Cl-]",      # diphenhydramine hydrochloride
    "OC(=O)C[C@@H](N)C(=O)O",                     # aspartic acid
    "c1ccc2c(c1)[nH]c1ccccc12",                   # carbazole
    "CCN(CC)CC(=O)Nc1c(C)cccc1C",                 # lidocaine
    "COc1ccc2[nH]c(S(=O)Cc3ncc(C)c(OC)c3C)nc2c1", # omeprazole
    "C[C@]12CC[C@H]3[C@@H](CC=C4C[C@@H](O)CC[C@@]43C)[C@@H]1CC[C@@H]2O",  # androstenediol
    "O=C([O-])CC(O)(CC(=O)[O-])C(=O)[O-].[K+].[K+].[K+]",  # potassium citrate
    "CC1=CC(=O)c2ccccc2C1=O",                     # menadione
    "NC(=O)c1cccnc1",                             # nicotinamide
    "CCCCC",                                      # pentane (no ring: empty scaffold)
    "c1ccncc1",                                   # pyridine
    "OCC1OC(O)C(O)C(O)C1O",                       # glucose
    "CC(C)NCC(O)COc1cccc2ccccc12",                # propranolol
    "Clc1ccc(cc1)C(c1ccccc1)N1CCN(CC1)CCOCC(=O)O",  # cetirizine
]

GARBAGE = ["C1CC", "not a smiles", "c1cccc", "[Xx]", "C(C)(C)(C)(C)C"]


@pytest.fixture
def drugs() -> list[str]:
    return list(DRUGS)
