"""`python -m berth_serving serve ...` and `python -m berth_serving fetch-model ...`."""

from berth_serving.cli import main

if __name__ == "__main__":
    main(prog_name="berth_serving")
