from twisted.application.service import ServiceMaker

yurthub = ServiceMaker("yurthub", "yurthub.tap", "Kubernetes edge-node proxy with offline cache", "yurthub")
