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
    "CC(=O)N[C@@H](Cc1ccc(O)cc1)C(=O)O",           # N-acetyl-L-tyrosine
    "CN1CCC[C@H]1c1cccnc1",                        # (S)-nicotine
    "CC(C)(C)NC[C@H](O)c1ccc(O)c(CO)c1",           # (R)-salbutamol
    "O=C(O)c1ccccc1O",                             # salicylic acid
    "CN1CCN(CC1)C(c1ccccc1)c1ccc(Cl)cc1",          # chlorcyclizine
    "Nc1ccc(cc1)S(=O)(=O)Nc1ccccn1",               # sulfapyridine
    "CC(C)C[C@H](NC(=O)[C@@H](Cc1ccccc1)NC(=O)c1cnccn1)B(O)O",  # bortezomib
    "O=C1CN=C(c2ccccc2)c2cc(Cl)ccc2N1",            # nordazepam
    "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc21",         # diazepam
    "OC(=O)CCCc1ccc(N(CCCl)CCCl)cc1",              # chlorambucil
    "C[N+](C)(C)CCOC(N)=O.[Cl-]",                  # carbachol (quaternary, stays charged)
    "[NH3+]CCc1ccc(O)c(O)c1.[Cl-]",                # dopamine hydrochloride
    "CC(=O)[O-].[Na+]",                            # sodium acetate
    "OC(=O)/C=C/C(=O)O.CN1CCC(=C2c3ccccc3C=Cc3ccccc32)CC1",  # cyproheptadine fumarate
    "C/C=C\\C",                                    # (Z)-2-butene
    "F[C@H](Cl)Br",                                # bromochlorofluoromethane
    "CC1=C(C(=O)O)N2C(=O)[C@@H](NC(=O)[C@H](N)c3ccccc3)[C@H]2SC1",  # cefalexin
    "Cn1cnc2c1c(=O)[nH]c(=O)n2C",                  # theophylline-like (theobromine)
    "CCOC(=O)C1=C(C)NC(C)=C(C(=O)OC)C1c1cccc([N+](=O)[O-])c1",  # nitrendipine (nitro kept)
    "O=C(O)CN(CC(=O)O)CC(=O)O",                    # nitrilotriacetic acid
    "c1ccc(cc1)-c1ccccc1",                         # biphenyl
    "CC(C)N=C(N)N=C(N)N",                          # biguanide fragment
    "O.O.CC(=O)Nc1ccc(O)cc1",                      # paracetamol dihydrate
    "[O-][n+]1ccccc1",                             # pyridine N-oxide (zwitterion kept)
    "C1CCC2(CC1)OCCO2",                            # spiro ketal
    "CC(C)(C)c1ccc(cc1)C(O)CCCN1CCC(CC1)C(O)(c1ccccc1)c1ccccc1",  # terfenadine
    "N[C@@H](CCC(=O)O)C(=O)O",                     # L-glutamic acid
    "CCCCCCCCCCCCCCCC(=O)[O-].[Na+]",              # sodium palmitate
    "Oc1ccc(cc1)[C@H]1CC[C@@H](CC1)N",             # trans ring stereo
    "[Cl-].[Cl-].[Zn+2].OCC1OC(O)C(O)C(O)C1O",    # metal salt with organic fragment
]

GARBAGE = ["C1CC", "not a smiles", "c1cccc", "[Xx]", "C(C)(C)(C)(C)C"]


@pytest.fixture
def drugs() -> list[str]:
    return list(DRUGS)
