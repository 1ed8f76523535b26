"""Agreement of a ranker's top choice with human preference labels.

For HH-RLHF each prompt has a human-chosen and a rejected reply; the ranker sees both (in
an order it does not control) and the metric is the fraction of prompts where its best
response is the chosen one (the CycleAlign paper's Figure 4). A ranker that failed to rank
a prompt (prediction -1) counts as wrong, and the failures are reported separately.
"""

import datasets
import evaluate

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: index of the response the ranker put first, or -1 when it gave no ranking.
    references: index of the human-preferred response.
Returns:
    accuracy: fraction of prompts where the ranker's first choice is the human's;
    failures: fraction of prompts with no ranking; n: number of prompts.
"""


class RankingAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Hong et al., 2023, CycleAlign, Figure 4",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references):
        n = len(predictions)
        if n == 0:
            return {"accuracy": 0.0, "failures": 0.0, "n": 0}
        correct = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
        failed = sum(int(p == -1) for p in predictions)
        return {"accuracy": correct / n, "failures": failed / n, "n": n}
