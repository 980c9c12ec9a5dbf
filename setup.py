"""Installs the blood-cell screening pipeline and its `bloodcell` command."""

from setuptools import find_packages, setup

setup(
    name="bloodcell-screening",
    version="0.1.0",
    description="Kubeflow-orchestrated TFX pipeline that screens blood-cell images for leukemia",
    python_requires="==3.10.*",
    packages=find_packages(
        include=["contracts", "training", "bloodcell", "components", "components.*", "pipelines", "serving", "cli"]
    ),
    package_data={"pipelines": ["schema/*.pbtxt"], "serving": ["static/*.html"]},
    # Exact versions come from requirements.lock; these are the direct needs.
    install_requires=[
        "tfx[kfp]==1.16.0",
        "apache-beam[gcp]==2.61.0",
        "pillow",
        "imagehash",
        "typer",
        "pyyaml",
        "matplotlib",
        "rich",
        "tqdm",
        "fastapi",
        "uvicorn",
        "python-multipart",
        "croniter",
    ],
    entry_points={"console_scripts": ["bloodcell=cli.main:main"]},
)
