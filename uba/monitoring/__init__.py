"""How the detector is doing: drift of each scored day (``drift``), the evaluation
against labels (``evaluation``, ``user_evaluation``) and the read-back of many runs
(``runs``)."""
