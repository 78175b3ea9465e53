from dropslot_kit.settings import KitSettings


class Settings(KitSettings):
    service: str = "catalog"
