"""Win/tie/lose rates of model A against model B from judgements made in both orders.

Each pair of responses is judged twice: once with A's response shown first ("forward") and
once with B's shown first ("backward"). A verdict is the position the judge preferred
(0 = first shown, 1 = second shown) or -1 when it gave none. A model wins a pair only when
both orders agree; a disagreement, as from a judge that always picks the first position,
counts as a tie (the position-bias control of the CycleAlign paper's Tables 2-3).
"""

import datasets
import evaluate

_DESCRIPTION = __doc__
_KWARGS_DESCRIPTION = """
Args:
    predictions: verdicts with A's response shown first (0 = A, 1 = B, -1 = none).
    references: verdicts with B's response shown first (0 = B, 1 = A, -1 = none).
Returns:
    win, tie, lose: fractions of pairs where A wins, ties, loses; n: number of pairs.
"""


class PairwiseWinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Hong et al., 2023, CycleAlign, Section 4.2",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references):
        wins = ties = losses = 0
        for forward, backward in zip(predictions, references, strict=True):
            for verdict in (forward, backward):
                if verdict not in (-1, 0, 1):
                    raise ValueError(f"A verdict must be -1, 0 or 1, got {verdict!r}.")
            a_forward = forward == 0
            a_backward = backward == 1
            b_forward = forward == 1
            b_backward = backward == 0
            if a_forward and a_backward:
                wins += 1
            elif b_forward and b_backward:
                losses += 1
            else:
                ties += 1
        n = wins + ties + losses
        if n == 0:
            return {"win": 0.0, "tie": 0.0, "lose": 0.0, "n": 0}
        return {"win": wins / n, "tie": ties / n, "lose": losses / n, "n": n}
