"""The training layer: a run's parts built once from its config (:mod:`.build`), the fit
(:mod:`.fit`, with the one sparsity callback of :mod:`.callback` and the fit strategies of
:mod:`.strategies`), and the measurements of the trained model (:mod:`.measure`)."""
