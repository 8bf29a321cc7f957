"""Owner-side ownership verification of a suspect encoder.

* ``watermark``: accuracy of the owner's secret rotation-prediction watermark
  MLP on a frozen suspect's representations (Dziedzic et al., ICML 2022,
  Section 5 "watermarking"); ownership is decided by a one-sided Fisher exact
  test against reference encoders not derived from the victim (``null_test``),
  not against chance. The watermark task itself (``rotation_task``,
  ``watermark_input``) is defined with the model in ``models.watermark``.
* ``dataset_inference``: Gaussian-mixture likelihood of the victim's private
  training data vs public data under the suspect's representations, with a
  one-sided Welch t-test (Dziedzic et al., "Dataset Inference for
  Self-Supervised Models", NeurIPS 2022).
"""
from sslsteal_jax.verification.dataset_inference import (dataset_inference, fit_gmm,
                                                         l2_normalize)
from sslsteal_jax.verification.watermark import (binomial_pvalue, fisher_pvalue, fit_linear_map,
                                                 null_test, verify_watermark)

__all__ = ["binomial_pvalue", "dataset_inference", "fisher_pvalue", "fit_gmm", "fit_linear_map",
           "l2_normalize", "null_test", "verify_watermark"]
