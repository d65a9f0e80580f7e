"""The registered pyfunc as MLflow "models from code": this file is the model's definition.

:func:`sdd.registry.pyfunc.log_pyfunc` logs this file instead of a cloudpickled
:class:`~sdd.registry.pyfunc.ErasedDiffusionModel`, so loading a registered version runs reviewed
source (this file and the ``sdd`` package logged beside it as ``code_paths``) and unpickles no code.
MLflow runs it at log time and at load time; it only names the model class.
"""

from mlflow.models import set_model

from sdd.registry.pyfunc import ErasedDiffusionModel

set_model(ErasedDiffusionModel())
