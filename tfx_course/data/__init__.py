"""Data for the course: where it is cached and how it is fetched and checked."""

from tfx_course.data.cache import MULTI30K_FILES, data_home, multi30k_status

__all__ = ["MULTI30K_FILES", "data_home", "multi30k_status"]
