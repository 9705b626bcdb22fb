# The course in a container: CPU torch, the course's .venv, the tfx-course kernel and the course
# checkpoint (package data). It serves plain JupyterLab on port 8888; built with
# --build-arg JUPYTERHUB_VERSION=<your hub's version> it is also a JupyterHub single-user image
# (README, "A hub or a container"). Every package comes from requirements/lock.txt.
#
#   docker build -t tfx_course .
#   docker run --rm -p 8888:8888 tfx_course        # then open the URL with the token it prints
FROM python:3.11.7-slim-bookworm

# The hub's own version, for its single-user server (jupyterhub-singleuser); empty: no hub.
ARG JUPYTERHUB_VERSION=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/tfx_course/.venv/bin:$PATH

# make runs the course's own set-up (make setup); nothing else is needed from the system.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tfx_course
# torch first, in its own layer: the CPU build (a container has no NVIDIA GPU at build time).
COPY requirements/lock.txt requirements/lock.txt
COPY tools/install_torch.py tools/install_torch.py
RUN python -m venv .venv && .venv/bin/python tools/install_torch.py --build cpu

# The course: the package (editable, with its checkpoint), JupyterLab and the tfx-course kernel.
COPY . .
RUN make setup TORCH_BUILD=cpu \
    && if [ -n "$JUPYTERHUB_VERSION" ]; then \
        .venv/bin/python -m pip install --quiet "jupyterhub==$JUPYTERHUB_VERSION" -c requirements/lock.txt; \
    fi \
    && .venv/bin/python -c "import tfx_course.pretrained as p; p.load_course_model()"

# The user JupyterHub's images use (uid 1000); the course is copied into the home on first start.
RUN useradd --create-home --uid 1000 --shell /bin/bash jovyan
COPY docker/start.sh /usr/local/bin/tfx-course-start
USER jovyan
WORKDIR /home/jovyan
EXPOSE 8888
ENTRYPOINT ["/usr/local/bin/tfx-course-start"]
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", \
     "--ServerApp.root_dir=/home/jovyan/tfx_course", \
     "--LabApp.default_url=/lab/tree/notebooks/00_setup.ipynb"]
