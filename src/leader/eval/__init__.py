"""Evaluation: the paper's protocols (§5-6), baselines, ablations and the entanglement report.

=====================  ====================================================================
module                 contents
=====================  ====================================================================
``retrieval``          precision@K (FAISS, query's own image excluded), disease retrieval
``anatomy``            kNN accuracy, silhouette, seeded t-SNE + plot
``metrics``            AUC per class / macro (undefined classes excluded with a warning),
                       multi-class AUC, Dice, IoU, NMI of k-means
``stats``              mean ± std over seeds, t-tests (two-sample, paired), Wilcoxon,
                       bootstrap intervals (SciPy), Table-2-style tables
``features``           representations from a student checkpoint, a teacher, any timm model
                       or an embedding store
``data``               splits by patient, label fractions, landmark sources, lung masks
``linear_probe``       image-level (multi-label) and lesion-level (multi-class) probes
``finetune``           full fine-tuning: classification, UperNet segmentation (smp)
``ensembles``          teacher concatenation, prediction averaging
``entanglement``       2 × N matrix: each embedding on an anatomy and a disease task
``ablation``           named ablation sets (``configs/ablations.yaml``)
``protocols``          one ``run_*`` function per protocol, writing Markdown + CSV + PNG
``report``             Markdown / CSV / PNG writers
=====================  ====================================================================

``leader eval ...`` (:mod:`leader.cli.eval`) runs the same functions from the command line;
see ``docs/evaluation.md``. Submodules are imported on use (they pull in torch/sklearn).
"""
