"""Distances on the Earth, for "drops near me" (through the store's branches)."""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_KM = 6371.0088


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class BoundingBox:
    """A box that contains every point within the radius, so an index on (lat, lng) can
    discard far branches before the exact distance is computed. `lng_min`/`lng_max` are
    None when the box would wrap around a pole or the antimeridian (then only latitude
    narrows the search; the exact distance still decides)."""

    lat_min: float
    lat_max: float
    lng_min: float | None
    lng_max: float | None


def bounding_box(lat: float, lng: float, radius_km: float) -> BoundingBox:
    dlat = math.degrees(radius_km / EARTH_RADIUS_KM)
    lat_min, lat_max = lat - dlat, lat + dlat
    if lat_min <= -90 or lat_max >= 90:
        return BoundingBox(max(lat_min, -90.0), min(lat_max, 90.0), None, None)
    # The widest longitude span is at the box's edge nearest a pole.
    dlng = math.degrees(radius_km / (EARTH_RADIUS_KM * math.cos(math.radians(max(abs(lat_min), abs(lat_max))))))
    lng_min, lng_max = lng - dlng, lng + dlng
    if lng_min < -180 or lng_max > 180:
        return BoundingBox(lat_min, lat_max, None, None)
    return BoundingBox(lat_min, lat_max, lng_min, lng_max)


def parse_point(value: str) -> tuple[float, float]:
    """`"lat,lng"` -> (lat, lng), or ValueError."""
    parts = value.split(",")
    if len(parts) != 2:
        raise ValueError("near must be 'lat,lng'")
    try:
        lat, lng = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError("near must be two numbers, 'lat,lng'") from None
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise ValueError("latitude must be within [-90, 90]")
    if not (math.isfinite(lng) and -180 <= lng <= 180):
        raise ValueError("longitude must be within [-180, 180]")
    return lat, lng
