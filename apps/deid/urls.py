app_name = "deid"
urlpatterns: list = []
