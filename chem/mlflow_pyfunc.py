"""MLflow "models from code" entry point for the fedadmet SMILES predictor.

``mlflow.pyfunc.save_model(python_model=<this file>)`` copies this file into
the model folder instead of pickling a Python object; loading it imports the
predictor class from the installed fedadmet and nothing else. The weights
and specs are ``.npz`` (read with ``allow_pickle=False``) and JSON artifacts.
``chem.mlflow_model.load_predictor`` checks that a model folder's copy of
this file is byte-identical to the installed one before using the folder.
"""

from mlflow.models import set_model

from chem.mlflow_model import SmilesPredictor

set_model(SmilesPredictor())
