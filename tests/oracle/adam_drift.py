"""How far AdamW trajectories may drift apart: the Python twin of tests/parallel/adam_drift.h.

Two implementations of the same training math (lattice and PyTorch, or two layouts) agree on
the gradients of a step only up to rounding. AdamW divides each element's first moment by the
root of its second moment, so an element whose gradient is far above that rounding moves by
nearly the same amount in both runs, while an element whose gradient IS rounding noise (e.g.
GPT-2's key bias, whose true gradient is zero) may move by up to ~lr per step in either
direction. A relative tolerance on the final weights cannot be right for both.

`DriftBound` propagates per-element intervals of (m, v, w) through torch.optim.AdamW's update
along a reference trajectory (its gradients before clipping, clip coefficients and learning
rates), for any other run whose gradients stay within `tol * ||g_tensor||` of the reference's
per element and whose clip coefficient is within a relative `tol`. The update is clamped to the
largest |m_hat| / sqrt(v_hat) AdamW can produce (Cauchy-Schwarz over the moment sums), and every
step adds the fp32 rounding of the kernel (a few 2^-24 of each term). See the C++ header for the
derivation. `max_drift` is the crude bound without any gradient information: two runs can move
an element apart by at most 2 * lr * u_max per step.
"""
import math

import numpy as np

ULP = 2.0 ** -24


def u_max(beta1, beta2, t):
    """The largest |m_hat| / sqrt(v_hat) AdamW can produce at step t (1-based), any gradients."""
    geo = sum((beta1 * beta1 / beta2) ** j for j in range(t))
    return (1 - beta1) / (1 - beta1 ** t) * math.sqrt(1 - beta2 ** t) * math.sqrt(geo / (1 - beta2))


def max_drift(lrs, beta1, beta2):
    """Largest |w_a - w_b| two AdamW runs from the same start can reach after these steps,
    whatever their gradients (weight decay moves both runs alike to first order)."""
    return sum(2 * lr * u_max(beta1, beta2, t) for t, lr in enumerate(lrs, 1))


class DriftBound:
    def __init__(self, initial, decay, beta1, beta2, eps, weight_decay):
        """initial: {name: array}; decay: {name: bool}."""
        self.b1, self.b2, self.eps, self.wd = beta1, beta2, eps, weight_decay
        self.t = 0
        self.e = {}
        for k, w in initial.items():
            w = np.asarray(w, dtype=np.float64).ravel()
            z = np.zeros_like(w)
            self.e[k] = dict(decay=decay[k], w_lo=w.copy(), w_hi=w.copy(), m_lo=z.copy(),
                             m_hi=z.copy(), v_lo=z.copy(), v_hi=z.copy())

    def step(self, grads, clip, lr, tol):
        self.t += 1
        b1, b2, eps = self.b1, self.b2, self.eps
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        umax = u_max(b1, b2, self.t)
        c_lo, c_hi = clip * (1 - tol), min(1.0, clip * (1 + tol))
        for k, g in grads.items():
            e = self.e[k]
            g = np.asarray(g, dtype=np.float64).ravel()
            d = tol * np.linalg.norm(g)
            lo, hi = g - d, g + d
            corners = np.stack([c_lo * lo, c_lo * hi, c_hi * lo, c_hi * hi])
            gs_lo = corners.min(axis=0)
            gs_hi = corners.max(axis=0)
            gs_lo = gs_lo - ULP * np.abs(gs_lo)
            gs_hi = gs_hi + ULP * np.abs(gs_hi)
            sq_hi = np.maximum(gs_lo ** 2, gs_hi ** 2)
            sq_lo = np.where((gs_lo <= 0) & (gs_hi >= 0), 0.0, np.minimum(gs_lo ** 2, gs_hi ** 2))
            m_terms = b1 * np.maximum(np.abs(e["m_lo"]), np.abs(e["m_hi"])) + \
                (1 - b1) * np.maximum(np.abs(gs_lo), np.abs(gs_hi))
            e["m_lo"] = b1 * e["m_lo"] + (1 - b1) * gs_lo - 4 * ULP * m_terms
            e["m_hi"] = b1 * e["m_hi"] + (1 - b1) * gs_hi + 4 * ULP * m_terms
            e["v_lo"] = (b2 * e["v_lo"] + (1 - b2) * sq_lo) * (1 - 4 * ULP)
            e["v_hi"] = (b2 * e["v_hi"] + (1 - b2) * sq_hi) * (1 + 4 * ULP)

            def u(m, v):
                return (m / bc1) / (np.sqrt(v / bc2) + eps)
            u_hi = np.where(e["m_hi"] >= 0, u(e["m_hi"], e["v_lo"]), u(e["m_hi"], e["v_hi"]))
            u_lo = np.where(e["m_lo"] >= 0, u(e["m_lo"], e["v_hi"]), u(e["m_lo"], e["v_lo"]))
            u_hi = np.clip(u_hi + 8 * ULP * np.abs(u_hi), -umax, umax)
            u_lo = np.clip(u_lo - 8 * ULP * np.abs(u_lo), -umax, umax)
            keep = 1 - lr * (self.wd if e["decay"] else 0.0)
            w_lo = e["w_lo"] * keep - lr * u_hi
            w_hi = e["w_hi"] * keep - lr * u_lo
            slack = 4 * ULP * (np.maximum(np.abs(w_lo), np.abs(w_hi)) +
                               lr * np.maximum(np.abs(u_lo), np.abs(u_hi)))
            e["w_lo"] = w_lo - slack
            e["w_hi"] = w_hi + slack

    def check(self, got):
        """(violations, elements, first violation text, median interval width)."""
        bad, n, first, widths = 0, 0, "", []
        for k, w in got.items():
            e = self.e[k]
            w = np.asarray(w, dtype=np.float64).ravel()
            out = (w < e["w_lo"]) | (w > e["w_hi"]) | ~np.isfinite(w)
            if out.any() and not first:
                i = int(np.argmax(out))
                first = f"{k}[{i}]: got {w[i]:.9g}, interval [{e['w_lo'][i]:.9g}, {e['w_hi'][i]:.9g}]"
            bad += int(out.sum())
            n += w.size
            widths.append(e["w_hi"] - e["w_lo"])
        return bad, n, first, float(np.median(np.concatenate(widths))) if widths else 0.0
