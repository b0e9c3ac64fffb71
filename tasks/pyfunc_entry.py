"""MLflow "models from code" entry point of the registered model.

MLflow stores this file with the model and runs it at load time to obtain the
model object, so nothing is pickled. Only MLflow imports it.
"""

import mlflow
from arena_pref.tasks.pyfunc_model import ArenaPrefModel

mlflow.models.set_model(ArenaPrefModel())
